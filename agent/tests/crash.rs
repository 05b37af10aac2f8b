//! Crash safety end to end (issue 3): the real `reactor-agent run` process serves an `http`
//! trigger (`response: async`) whose workflow calls a local HTTP server three times, with a
//! `sleep` in between. A sender streams sequence-numbered events at it while the agent is
//! SIGKILLed and restarted at random moments.
//!
//! Afterwards (the agent drained and stopped with SIGTERM, its redb journal opened here):
//! - every event answered 202 has a succeeded execution for that event, and so does every
//!   execution in the journal;
//! - the server received a request for every step, and a step whose end was journaled never
//!   ran again: a key seen more than once was seen at most once per incarnation, and never
//!   after the incarnation that journaled the step's end (it was in flight at a kill);
//! - each (event, step) reached the server under one idempotency key only.
//!
//! Each incarnation gets `CRASH_INCARNATION=n` (allow-listed as `env.CRASH_INCARNATION`) and
//! puts it into the request body, so the server knows which process sent each request; the
//! journal's `EffectFinished` time falls in one incarnation's lifetime.
//!
//! `REACTOR_AGENT_CRASH_KILLS` sets the number of kills (default 100),
//! `REACTOR_AGENT_CRASH_SEED` the seed of the kill moments (printed on failure),
//! `REACTOR_AGENT_CRASH_SENDERS` the number of concurrent senders (default 1; more senders
//! mean more executions in flight at each kill, and a slower recovery at each start).
//!
//! Time: a debug agent takes ~250 ms to /healthz on a busy 2-core box, more with executions to
//! recover (each is resumed with its own journal write); 100 kills take ~40 s.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use reactor_core::engine::{ExecutionStatus, Fact, Outcome, Timestamp};
use reactor_core::store::{ExecutionQuery, RedbOptions, RedbStore, Store};
use serde_json::{Value, json};
use support::{Agent, free_port, write};

const STEPS: [&str; 3] = ["a", "b", "c"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic kill moments for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One request the side-effect server received.
#[derive(Clone, Debug)]
struct Hit {
    key: String,
    step: String,
    seq: u64,
    incarnation: usize,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

async fn record(
    State(hits): State<Hits>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let hit = Hit {
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        step: body["step"].as_str().unwrap_or_default().to_string(),
        seq: body["seq"].as_u64().unwrap_or(u64::MAX),
        incarnation: body["incarnation"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX),
    };
    hits.lock().unwrap().push(hit);
    Json(json!({ "ok": true }))
}

/// The side-effect server: answers 200 JSON to every POST /effect and records it.
async fn start_sink() -> (String, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route("/effect", post(record))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/effect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn workflow(sink: &str) -> String {
    let step = |id: &str| {
        format!(
            "  - id: {id}\n    action: http\n    with:\n      url: {sink}\n      json:\n        \
             step: {id}\n        seq: ${{{{ event.data.seq }}}}\n        \
             incarnation: ${{{{ env.CRASH_INCARNATION }}}}\n"
        )
    };
    format!(
        "reactor: 1\nname: crash\ntriggers:\n  - http: {{ path: /events, response: async }}\n\
         steps:\n{}  - sleep: 5ms\n{}  - sleep: 5ms\n{}",
        step("a"),
        step("b"),
        step("c")
    )
}

/// Posts `{seq}` events until `stop` from `senders` tasks, each one request at a time;
/// returns (seq, execution id) of every event answered 202.
async fn send(base: String, stop: Arc<AtomicBool>, senders: usize) -> Vec<(u64, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (client, url, stop, next) = (
            client.clone(),
            format!("{base}/events"),
            stop.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut acknowledged = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let sent = client.post(&url).json(&json!({ "seq": seq })).send().await;
                if let Ok(response) = sent
                    && response.status() == 202
                    && let Ok(body) = response.json::<Value>().await
                    && let Some(id) = body["execution"].as_str()
                {
                    acknowledged.push((seq, id.to_string()));
                } else {
                    // Down, starting or busy: this event was not acknowledged.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            acknowledged
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    acknowledged
}

/// A CA file with one certificate, when the system has a bundle: the http action's client
/// then starts in ~20 ms instead of ~600 ms (a debug build parsing ~150 system roots), which
/// is most of a debug agent's start-up. The test only calls http://.
fn one_ca(dir: &Path) -> Option<PathBuf> {
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").ok()?;
    let end = "-----END CERTIFICATE-----";
    let first = &bundle[bundle.find("-----BEGIN CERTIFICATE-----")?..];
    let first = &first[..first.find(end)? + end.len()];
    let file = dir.join("one-ca.pem");
    std::fs::write(&file, format!("{first}\n")).ok()?;
    Some(file)
}

fn spawn(workflows: &Path, data: &Path, port: u16, incarnation: usize, ca: Option<&Path>) -> Agent {
    let incarnation = incarnation.to_string();
    let mut env = vec![
        ("REACTOR_ENV__ALLOW", r#"["CRASH_INCARNATION"]"#),
        ("CRASH_INCARNATION", incarnation.as_str()),
    ];
    if let Some(ca) = ca.and_then(Path::to_str) {
        env.extend([("SSL_CERT_FILE", ca), ("SSL_CERT_DIR", "/nonexistent")]);
    }
    Agent::spawn(workflows, data, port, &env)
}

/// Polls the API until no execution is running or queued.
async fn drained(agent: &Agent, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut busy = false;
        for status in ["running", "queued"] {
            let (code, page) = agent
                .get(&format!("/api/v1/executions?status={status}&limit=1"))
                .await;
            assert_eq!(code, 200, "{page}");
            busy |= !page["executions"].as_array().unwrap().is_empty();
        }
        if !busy {
            return;
        }
        assert!(Instant::now() < deadline, "executions still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_event_and_repeats_no_finished_step() {
    let kills = env_number("REACTOR_AGENT_CRASH_KILLS", 100) as usize;
    let seed = env_number("REACTOR_AGENT_CRASH_SEED", 0x00c0_ffee);
    let senders = env_number("REACTOR_AGENT_CRASH_SENDERS", 1) as usize;
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    let data = dir.path().join("data");
    std::fs::create_dir(&workflows).unwrap();
    let ca = one_ca(dir.path());
    let (sink, hits) = start_sink().await;
    write(&workflows, "crash.yaml", &workflow(&sink));

    // One port for every incarnation, so the sender needs no news of restarts.
    let port = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send(
        format!("http://127.0.0.1:{port}"),
        stop.clone(),
        senders,
    ));
    let began = Instant::now();
    // (start, end) wall-clock milliseconds of each incarnation.
    let mut lifetimes: Vec<(i64, i64)> = Vec::new();
    for incarnation in 0..kills {
        let start = Timestamp::now().0;
        let mut agent = spawn(&workflows, &data, port, incarnation, ca.as_deref());
        // One kill in four at any moment from the start (during start-up and recovery); the
        // others while serving, up to 250 ms after /healthz says ready.
        let random = Duration::from_millis(rng.next() % 250);
        if !rng.next().is_multiple_of(4) {
            agent.healthy(Duration::from_secs(20)).await;
        }
        tokio::time::sleep(random).await;
        assert!(
            agent.running(),
            "seed {seed:#x}: incarnation {incarnation} exited on its own: {}",
            agent.logs()
        );
        agent.kill();
        lifetimes.push((start, Timestamp::now().0));
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = sender.await.unwrap();
    let killing = began.elapsed();

    // A last incarnation without kills finishes everything, then stops cleanly.
    let start = Timestamp::now().0;
    let mut agent = spawn(&workflows, &data, port, kills, ca.as_deref());
    agent.healthy(Duration::from_secs(20)).await;
    drained(&agent, Duration::from_secs(30)).await;
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "{}", agent.logs());
    lifetimes.push((start, Timestamp::now().0));
    let elapsed = began.elapsed();

    let store = RedbStore::open(data.join("journal.redb"), RedbOptions::default()).unwrap();
    let records = store
        .executions(&ExecutionQuery {
            limit: 0,
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    let incarnation_at = |at: Timestamp| {
        lifetimes
            .iter()
            .position(|(s, e)| at.0 >= *s && at.0 <= *e + 1)
    };
    // Execution id → its event's sequence number; idempotency key → the incarnation that
    // journaled the step's end.
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    let mut recorded_in: HashMap<String, usize> = HashMap::new();
    for record in &records {
        assert_eq!(
            record.status,
            ExecutionStatus::Succeeded,
            "seed {seed:#x}: {} {:?}",
            record.id.0,
            record.error
        );
        let id = record.id.0.to_string();
        for fact in store.journal(record.id).await.unwrap() {
            match fact {
                Fact::Started { event, .. } => {
                    seq_of.insert(id.clone(), event.data["seq"].as_u64().unwrap());
                }
                Fact::EffectFinished {
                    key, outcome, at, ..
                } => {
                    let step = key.split('@').next().unwrap();
                    if STEPS.contains(&step) {
                        assert!(matches!(outcome, Outcome::Succeeded(_)), "{outcome:?}");
                        let incarnation = incarnation_at(at).unwrap_or_else(|| {
                            panic!("{id}:{step} ended at {at:?}, outside every lifetime")
                        });
                        let previous = recorded_in.insert(format!("{id}:{step}"), incarnation);
                        assert!(previous.is_none(), "{id}:{step}: its end is journaled once");
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        recorded_in.len(),
        records.len() * STEPS.len(),
        "every step of every execution journaled its end"
    );

    // Every acknowledged event completed, as the execution it was acknowledged with.
    for (seq, id) in &acknowledged {
        assert_eq!(
            seq_of.get(id),
            Some(seq),
            "seed {seed:#x}: event {seq} was answered 202 as {id}, which is not in the journal"
        );
    }

    let hits = hits.lock().unwrap().clone();
    let mut runs: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut keys_of: HashMap<(u64, &str), BTreeSet<&str>> = HashMap::new();
    for hit in &hits {
        assert!(
            hit.incarnation <= kills,
            "a request without an incarnation: {hit:?}"
        );
        runs.entry(&hit.key).or_default().push(hit.incarnation);
        keys_of
            .entry((hit.seq, &hit.step))
            .or_default()
            .insert(&hit.key);
        // The key names the execution and step the body speaks of.
        let (id, step) = hit.key.split_once(':').unwrap();
        assert_eq!(step, hit.step, "{hit:?}");
        assert_eq!(seq_of.get(id), Some(&hit.seq), "{hit:?}");
    }
    for ((seq, step), keys) in &keys_of {
        assert_eq!(
            keys.len(),
            1,
            "seed {seed:#x}: event {seq} step {step} ran under several keys: {keys:?}"
        );
    }
    let mut repeated = 0;
    for (key, recorded) in &recorded_in {
        let ran = runs.get(key.as_str()).unwrap_or_else(|| {
            panic!("seed {seed:#x}: {key} finished but never reached the server")
        });
        let mut once = ran.clone();
        once.sort_unstable();
        once.dedup();
        assert_eq!(
            once.len(),
            ran.len(),
            "seed {seed:#x}: {key} ran twice in one incarnation: {ran:?}"
        );
        assert_eq!(
            ran.iter().max(),
            Some(recorded),
            "seed {seed:#x}: {key} ran again after its end was journaled: {ran:?}"
        );
        if ran.len() > 1 {
            repeated += 1;
        }
    }
    assert_eq!(
        runs.len(),
        recorded_in.len(),
        "seed {seed:#x}: the server saw a key of no journaled step"
    );
    eprintln!(
        "{kills} kills (seed {seed:#x}) in {killing:.1?}, drained and stopped at {elapsed:.1?}: {} events acknowledged, {} executions, \
         {} requests for {} steps, {repeated} steps re-sent after a kill (same key)",
        acknowledged.len(),
        records.len(),
        hits.len(),
        recorded_in.len()
    );
    assert!(
        acknowledged.len() > kills,
        "too few events went through to mean anything"
    );
}
