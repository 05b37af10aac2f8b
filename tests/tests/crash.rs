//! Crash safety, proven with a real process: `crash-worker` runs multi-step executions against
//! a journal and is SIGKILLed at random moments, then restarted, many times. The same run is
//! made on the agent's redb journal and on the hub's SQL store (SQLite file, PostgreSQL).
//!
//! Afterwards: every execution completed; no step that had finished ran again; a step that
//! ran more than once did so only across kills (it was in flight) and always with the same
//! idempotency key.
//!
//! `REACTOR_CRASH_KILLS` sets the number of kills (default 200; try 10000 for a long run),
//! `REACTOR_CRASH_SEED` the seed of the kill moments (printed on failure). PostgreSQL comes
//! from `REACTOR_TEST_POSTGRES` (see `reactor_hub::db::testing`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reactor_core::engine::{ExecutionStatus, Fact, Timestamp};
use reactor_core::store::{ExecutionQuery, RedbOptions, RedbStore, Store};
use reactor_hub::db::testing::TempPostgres;
use reactor_hub::db::{Database, SqlStore};

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

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.redb");
    crash_run(dir.path(), db.to_str().unwrap(), REDB_LIVES, &|_| {
        Box::new(RedbStore::open(&db, RedbOptions::default()).unwrap())
    });
}

#[test]
fn sigkill_on_the_hub_sqlite_store_loses_nothing_and_repeats_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let spec = format!("sqlite:{}", db.display());
    crash_run(dir.path(), &spec, REDB_LIVES, &|runtime| {
        sql_store(runtime, &spec)
    });
}

#[test]
fn sigkill_on_the_hub_postgres_store_loses_nothing_and_repeats_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database = runtime.block_on(TempPostgres::create("crash")).unwrap();
    let url = database.url().to_string();
    crash_run(dir.path(), &url, POSTGRES_LIVES, &|runtime| {
        sql_store(runtime, &url)
    });
}

/// How long incarnations live before their kill.
#[derive(Clone, Copy, Debug)]
struct Lives {
    /// Kills when `REACTOR_CRASH_KILLS` is not set.
    kills: u64,
    /// Shortest life, ms.
    min_ms: u64,
    /// Lives are spread over `min_ms .. min_ms + spread_ms`.
    spread_ms: u64,
}

/// redb and SQLite open in a few milliseconds: short lives kill them mid-commit.
const REDB_LIVES: Lives = Lives {
    kills: 200,
    min_ms: 5,
    spread_ms: 120,
};

/// A PostgreSQL incarnation connects first, and adopts what killed ones left only after
/// their lease (1 s in the worker) lapsed: lives long enough for some to outlive a lease.
const POSTGRES_LIVES: Lives = Lives {
    kills: 60,
    min_ms: 50,
    spread_ms: 1_500,
};

/// The SQL store at `spec` (as the worker takes it), for reading the outcome. Reads need no
/// hub instance.
fn sql_store(runtime: &tokio::runtime::Runtime, spec: &str) -> Box<dyn Store> {
    runtime.block_on(async {
        let db = match spec.strip_prefix("sqlite:") {
            Some(path) => Database::open_sqlite(std::path::Path::new(path)).await,
            None => Database::open_postgres(spec).await,
        }
        .unwrap();
        Box::new(SqlStore::new(db, "crash-test-reader")) as Box<dyn Store>
    })
}

/// Kills and restarts the worker on the journal `spec`, then checks the outcome through the
/// store `open` returns.
fn crash_run(
    dir: &std::path::Path,
    spec: &str,
    lives: Lives,
    open: &dyn Fn(&tokio::runtime::Runtime) -> Box<dyn Store>,
) {
    let kills = env_number("REACTOR_CRASH_KILLS", lives.kills);
    let seed = env_number("REACTOR_CRASH_SEED", 0x5eed_cafe);
    let total = env_number("REACTOR_CRASH_EXECUTIONS", 400) as usize;
    let ledger = dir.join("ledger.txt");
    let worker = env!("CARGO_BIN_EXE_crash-worker");
    let mut rng = Rng(seed | 1);
    // (start, end) wall-clock milliseconds of each incarnation.
    let mut lifetimes: Vec<(i64, i64)> = Vec::new();
    let spawn = |incarnation: usize| {
        Command::new(worker)
            .args([
                spec,
                ledger.to_str().unwrap(),
                &total.to_string(),
                &incarnation.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crash-worker")
    };
    let mut finished_early = 0;
    for incarnation in 0..kills as usize {
        let start = Timestamp::now().0;
        let mut child = spawn(incarnation);
        let life = Duration::from_millis(lives.min_ms + rng.next() % lives.spread_ms);
        let deadline = Instant::now() + life;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match exited {
            Some(status) => {
                let output = child.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "seed {seed:#x}: worker failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                finished_early += 1;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
        }
        lifetimes.push((start, Timestamp::now().0));
    }
    // A last run without kills finishes everything.
    let start = Timestamp::now().0;
    let output = spawn(kills as usize).wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "seed {seed:#x}: final run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    lifetimes.push((start, Timestamp::now().0));
    eprintln!(
        "{kills} kills ({finished_early} incarnations finished before their kill), seed {seed:#x}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = open(&runtime);
    let records = runtime
        .block_on(store.executions(&ExecutionQuery {
            limit: total + 10,
            ..ExecutionQuery::default()
        }))
        .unwrap();
    assert_eq!(
        records.len(),
        total,
        "every submitted execution exists exactly once"
    );

    // Which incarnation durably recorded each step's end.
    let incarnation_at = |at: Timestamp| {
        lifetimes
            .iter()
            .position(|(s, e)| at.0 >= *s && at.0 <= *e + 1)
    };
    let mut recorded_in: HashMap<String, usize> = HashMap::new();
    for record in &records {
        assert_eq!(
            record.status,
            ExecutionStatus::Succeeded,
            "seed {seed:#x}: {:?}",
            record.error
        );
        for (_, step) in &record.steps {
            assert_eq!(step.status, reactor_core::engine::StepStatus::Succeeded);
        }
        let journal = runtime.block_on(store.journal(record.id)).unwrap();
        for fact in journal {
            if let Fact::EffectFinished { key, at, .. } = fact
                && let Some(step) = key.strip_suffix("@1")
                && ["one", "fan.left/two", "fan.right/three"].contains(&step)
            {
                let idempotency_key = format!("{}:{step}", record.id);
                let previous = recorded_in.insert(
                    idempotency_key,
                    incarnation_at(at).expect("fact time within a lifetime"),
                );
                assert!(previous.is_none(), "a step's end is journaled once");
            }
        }
    }
    assert_eq!(
        recorded_in.len(),
        total * 3,
        "every side-effecting step recorded its end"
    );

    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: HashMap<&str, Vec<usize>> = HashMap::new();
    for line in ledger_text.lines() {
        let mut parts = line.split(' ');
        let incarnation: usize = parts.next().unwrap().parse().unwrap();
        let key = parts.next().unwrap();
        runs.entry(key).or_default().push(incarnation);
    }
    let mut repeated = 0;
    let mut before_last = 0;
    for (key, recorded) in &recorded_in {
        let ran = runs
            .get(key.as_str())
            .unwrap_or_else(|| panic!("step {key} never ran"));
        // Within one incarnation a step runs at most once.
        let mut sorted = ran.clone();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ran.len(),
            "seed {seed:#x}: {key} ran twice in one incarnation: {ran:?}"
        );
        // It never ran after the incarnation that recorded its end.
        assert_eq!(
            ran.iter().max(),
            Some(recorded),
            "seed {seed:#x}: {key} ran again after it had finished: {ran:?}"
        );
        if ran.len() > 1 {
            repeated += 1;
        }
        if ran.iter().any(|incarnation| *incarnation < kills as usize) {
            before_last += 1;
        }
    }
    assert_eq!(
        runs.len(),
        recorded_in.len(),
        "no side effect ran for an unknown step"
    );
    eprintln!(
        "{} steps, {before_last} ran in killed incarnations, {repeated} re-ran after a kill (in flight, same idempotency key)",
        recorded_in.len()
    );
    assert!(
        before_last > 0,
        "the kills hit work in progress (not only startups)"
    );
}
