//! SIGKILL the real `reactor-hub serve` mid-stream and restart it, once per source that can
//! redeliver: Redis streams, NATS JetStream, Kafka (librdkafka's mock cluster, which lives in
//! this test process: the hub connects to its bootstrap address), PostgreSQL and MariaDB
//! change capture, and the PostgreSQL poller.
//!
//! Each test: a workflow whose one step sleeps (so executions are in flight) is uploaded
//! through the API; a producer writes N events at a steady pace; once a quarter of them have
//! executions the hub is killed with SIGKILL while the producer goes on; the hub is started
//! again on the same data folder. Then every source event must have exactly one execution,
//! and every execution must have succeeded (the ones in flight at the kill are resumed from
//! the journal, the events recorded but not acknowledged are redelivered and de-duplicated).
//!
//! Redis pub/sub and NATS core subjects are at most once by nature (nothing is kept for an
//! absent subscriber): they have no test here (docs/triggers.md).

mod api_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use api_support::{Hub, Place};
use serde_json::Value;

/// Events per test.
const EVENTS: usize = 200;
/// Pause between two produced events (the stream lasts about EVENTS × PACE).
const PACE: Duration = Duration::from_millis(5);
/// Warm-up events are numbered from here.
const WARM_UP: usize = 1_000_000;

const REDIS: &str = "redis://127.0.0.1:6379";
const NATS: &str = "nats://127.0.0.1:4222";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Where the test writes its events.
#[derive(Clone)]
enum Source {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        stream: String,
    },
    Nats {
        js: async_nats::jetstream::Context,
        subject: String,
    },
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        topic: String,
    },
    Postgres {
        pool: sqlx::PgPool,
        table: String,
    },
    Mysql {
        pool: mysql_async::Pool,
        table: String,
    },
}

impl Source {
    /// Writes event number `n` (one row, entry or message carrying `n`).
    async fn send(&self, n: usize) {
        match self {
            Source::Redis { conn, stream } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("n")
                    .arg(n)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            Source::Nats { js, subject } => {
                js.publish(subject.clone(), format!("{{\"n\": {n}}}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Source::Kafka { producer, topic } => {
                let payload = format!("{{\"n\": {n}}}");
                let key = n.to_string();
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(topic)
                            .key(&key)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
            Source::Postgres { pool, table } => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (n) VALUES ($1)"
                )))
                .bind(i64::try_from(n).unwrap())
                .execute(pool)
                .await
                .unwrap();
            }
            Source::Mysql { pool, table } => {
                use mysql_async::prelude::Queryable;
                let mut conn = pool.get_conn().await.unwrap();
                conn.exec_drop(format!("INSERT INTO {table} (n) VALUES (?)"), (n,))
                    .await
                    .unwrap();
            }
        }
    }
}

/// One crash test: the hub's config, the workflow's trigger and where `n` sits in the event.
struct Case {
    workflow: String,
    /// hub.toml text.
    config: String,
    /// The trigger entry (a YAML flow mapping).
    trigger: String,
    /// The expression of the event's number, e.g. `event.data.n`.
    number: &'static str,
}

async fn list(hub: &Hub, workflow: &str) -> Vec<Value> {
    let reply = hub
        .get(&format!(
            "/api/v1/executions?workflow={workflow}&limit=1000"
        ))
        .await
        .expect(200);
    reply.body["executions"].as_array().unwrap().clone()
}

/// Waits until `ready` holds for the workflow's executions (or `within` passes); returns them.
async fn wait_list(
    hub: &Hub,
    workflow: &str,
    within: Duration,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let executions = list(hub, workflow).await;
        if ready(&executions) || Instant::now() > deadline {
            return executions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_count(executions: &[Value], status: &str) -> usize {
    executions.iter().filter(|e| e["status"] == status).count()
}

fn sigkill(hub: &Hub) {
    let killed = Command::new("kill")
        .arg("-KILL")
        .arg(hub.pid().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Runs one crash test (see the module docs) and checks exactly-once.
async fn crash_and_recover(case: Case, source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, &case.config).unwrap();
    let config = config.to_str().unwrap().to_string();
    let env = [("REACTOR_CONFIG", config.as_str())];
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place.clone(), &env).await;
    let name = &case.workflow;
    let yaml = format!(
        "reactor: 1\nname: {name}\ntriggers:\n  - {}\nsteps:\n  - id: pause\n    sleep: 300ms\n\
         output:\n  n: \"${{{{ {} }}}}\"\n",
        case.trigger, case.number
    );
    hub.send_yaml("POST", "/api/v1/workflows", &yaml)
        .await
        .expect(201);

    // Warm-up events (numbers from WARM_UP) until one has an execution: then the trigger is
    // live (groups, slots and start positions exist). Change capture and pollers start at
    // the source's current end, so the first few may be missed; none may be doubled.
    let mut warm_up = WARM_UP;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        source.send(warm_up).await;
        warm_up += 1;
        let started = wait_list(&hub, name, Duration::from_millis(500), |e| !e.is_empty()).await;
        if !started.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trigger never started\n{}",
            hub.logs()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warmed = list(&hub, name).await.len();

    let producer = tokio::spawn({
        let source = source.clone();
        async move {
            for n in 0..EVENTS {
                source.send(n).await;
                tokio::time::sleep(PACE).await;
            }
        }
    });
    let before = wait_list(&hub, name, Duration::from_secs(60), |e| {
        e.len() >= warmed + EVENTS / 4
    })
    .await;
    sigkill(&hub);
    let admin = hub.admin.clone();
    let logs_before = hub.logs();
    drop(hub);
    let in_flight = status_count(&before, "running");
    eprintln!(
        "killed with {} executions recorded, {in_flight} running; producer finished: {}",
        before.len(),
        producer.is_finished()
    );
    assert!(
        before.len() < warmed + EVENTS,
        "the stream was over before the kill: make it longer"
    );

    let hub = Hub::spawn(place, admin, &env);
    hub.healthy(Duration::from_secs(30)).await;
    producer.await.unwrap();
    let done = |e: &[Value]| e.len() >= warmed + EVENTS && status_count(e, "succeeded") == e.len();
    let executions = wait_list(&hub, name, Duration::from_secs(120), done).await;
    assert!(
        done(&executions),
        "{} executions, {} succeeded\n--- before the kill\n{logs_before}\n--- after\n{}",
        executions.len(),
        status_count(&executions, "succeeded"),
        hub.logs()
    );
    // Late redeliveries would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let executions = list(&hub, name).await;
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for summary in &executions {
        let execution = hub.finished(summary["id"].as_str().unwrap()).await;
        assert_eq!(execution["status"], "succeeded", "{execution}");
        let n = &execution["output"]["n"];
        let n: usize = n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("no number in {execution}"));
        *seen.entry(n).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        doubled.is_empty(),
        "events with more than one execution: {doubled:?}"
    );
    let expected: Vec<usize> = (0..EVENTS).collect();
    let got: Vec<usize> = seen.keys().filter(|n| **n < WARM_UP).copied().collect();
    assert_eq!(got, expected, "every event exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stream_survives_sigkill() {
    let stream = unique("reactor-crash");
    let conn = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379");
    let case = Case {
        workflow: unique("redis-crash").replace('_', "-"),
        config: format!("[connections.cache]\nurl = \"{REDIS}\"\n"),
        trigger: format!("redis: {{ stream: {stream}, group: hub, connection: cache }}"),
        number: "event.data.n",
    };
    let source = Source::Redis {
        conn: conn.clone(),
        stream: stream.clone(),
    };
    // The group is created by the trigger at the stream's end: create it first from the
    // start so that event 0, written before the trigger runs, is read.
    let mut admin = conn;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("hub")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .unwrap();
    crash_and_recover(case, source).await;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_jetstream_survives_sigkill() {
    use async_nats::jetstream;
    let name = unique("CRASH").to_uppercase();
    let subject = unique("crash");
    let js = jetstream::new(async_nats::connect(NATS).await.expect("NATS on 4222"));
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    // The operator's durable consumer, with a short ack wait so that what the killed hub had
    // in hand is redelivered within seconds (the trigger creates one with 30 s when missing).
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("hub".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            filter_subject: format!("{subject}.>"),
            ..Default::default()
        })
        .await
        .unwrap();
    let case = Case {
        workflow: unique("nats-crash").replace('_', "-"),
        config: format!("[connections.nats]\nurl = \"{NATS}\"\n"),
        trigger: format!("nats: {{ subject: \"{subject}.>\", stream: {name}, durable: hub }}"),
        number: "event.data.n",
    };
    let source = Source::Nats {
        js: js.clone(),
        subject: format!("{subject}.orders"),
    };
    crash_and_recover(case, source).await;
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_survives_sigkill() {
    use rdkafka::config::ClientConfig;
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("crash");
    cluster.create_topic(&topic, 4, 1).unwrap();
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // A killed member holds its partitions until its session times out: short here.
    let case = Case {
        workflow: unique("kafka-crash").replace('_', "-"),
        config: format!(
            "[connections.kafka]\nbrokers = \"{brokers}\"\n\
             options = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n"
        ),
        trigger: format!("kafka: {{ topic: {topic}, group: hub, from: earliest }}"),
        number: "event.data.n",
    };
    crash_and_recover(case, Source::Kafka { producer, topic }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_cdc_survives_sigkill() {
    postgres_case("cdc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_poll_survives_sigkill() {
    postgres_case("poll").await;
}

async fn postgres_case(mode: &str) {
    let pool = sqlx::PgPool::connect(POSTGRES)
        .await
        .expect("PostgreSQL on 5432");
    let table = unique("crash");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, n bigint NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let settings = match mode {
        "cdc" => "mode: cdc, operations: insert".to_string(),
        _ => "mode: poll, poll: { column: id, every: 100ms }".to_string(),
    };
    let workflow = unique(&format!("pg-{mode}-crash")).replace('_', "-");
    let slot = reactor_hub_triggers::postgres::PostgresTrigger::slot_name(
        &workflow,
        &format!("\"{table}\""),
    );
    let case = Case {
        workflow,
        config: format!("[connections.postgres]\nurl = \"{POSTGRES}\"\n"),
        trigger: format!("postgres: {{ table: {table}, {settings} }}"),
        number: "event.data.new.n",
    };
    let source = Source::Postgres {
        pool: pool.clone(),
        table: table.clone(),
    };
    crash_and_recover(case, source).await;
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .execute(&pool)
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_cdc_survives_sigkill() {
    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(MYSQL);
    let table = unique("crash");
    let mut conn = pool.get_conn().await.expect("MariaDB on 3306");
    conn.query_drop(format!(
        "CREATE TABLE {table} (id bigint AUTO_INCREMENT PRIMARY KEY, n bigint NOT NULL)"
    ))
    .await
    .unwrap();
    let case = Case {
        workflow: unique("mysql-crash").replace('_', "-"),
        config: format!("[connections.mysql]\nurl = \"{MYSQL}\"\n"),
        trigger: format!("mysql: {{ table: {table}, mode: cdc, operations: insert }}"),
        number: "event.data.new.n",
    };
    let source = Source::Mysql {
        pool: pool.clone(),
        table: table.clone(),
    };
    crash_and_recover(case, source).await;
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
}
