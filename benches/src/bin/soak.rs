//! Soak test: runs many executions of a small durable workflow on `RedbStore` with retention
//! (keep 10,000) and shows that memory stays flat and the database file stays bounded.
//!
//! Every 100,000 executions it prints the count, the rate (of the last interval and overall),
//! the process RSS (`VmRSS`) and the redb file size; then one summary line.
//!
//! ```text
//! cargo run -p reactor-benches --profile bench --bin soak -- --executions 1000000
//! ```
//!
//! Flags: `--executions N` (1,000,000), `--in-flight K` (256), `--data DIR` (a temp dir),
//! `--report-every N` (100,000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::future::join_all;
use reactor_benches::{GUARDED_TWO, event, runtime};
use reactor_core::engine::{ExecutionStatus, Runtime, RuntimeConfig, Submission};
use reactor_core::store::{ExecutionQuery, RedbOptions, RedbStore, Retention, Store};
use serde_json::json;

const WORKFLOW: &str = "guarded-two";

#[derive(Debug)]
struct Options {
    executions: u64,
    in_flight: u64,
    data: Option<PathBuf>,
    report_every: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        executions: 1_000_000,
        in_flight: 256,
        data: None,
        report_every: 100_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--executions" => options.executions = value()?.parse().context("--executions")?,
            "--in-flight" => options.in_flight = value()?.parse().context("--in-flight")?,
            "--report-every" => {
                options.report_every = value()?.parse().context("--report-every")?
            }
            "--data" => options.data = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown flag {other:?} (flags: --executions N, --in-flight K, --data DIR, --report-every N)"
            ),
        }
    }
    if options.in_flight == 0 || options.report_every == 0 {
        bail!("--in-flight and --report-every must be at least 1");
    }
    Ok(options)
}

/// Resident set size in KiB, from `/proc/self/status` (`VmRSS`, or `VmHWM` for the peak).
fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Progress {
    done: AtomicU64,
    start: Instant,
    interval: std::sync::Mutex<(Instant, u64)>,
    max_rss_kib: AtomicU64,
    max_file: AtomicU64,
}

impl Progress {
    fn report(&self, done: u64, file: &Path) {
        let now = Instant::now();
        let (interval_rate, _) = {
            let mut last = self
                .interval
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            *last = (now, done);
            (rate, ())
        };
        let rss = memory_kib("VmRSS:");
        let size = file_size(file);
        self.max_rss_kib.fetch_max(rss, Ordering::Relaxed);
        self.max_file.fetch_max(size, Ordering::Relaxed);
        let elapsed = self.start.elapsed().as_secs_f64();
        println!(
            "{done:>9} executions  {elapsed:7.1} s  {interval_rate:8.0}/s (overall {:6.0}/s)  rss {:6.1} MiB  redb {:7.1} MiB",
            done as f64 / elapsed,
            rss as f64 / 1024.0,
            mib(size),
        );
    }
}

async fn lane(
    runtime: &Runtime,
    progress: &Progress,
    options: &Options,
    file: &Path,
    first: u64,
) -> anyhow::Result<()> {
    let mut n = first;
    while n < options.executions {
        let submission = runtime
            .submit(WORKFLOW, event(n), json!({}))
            .await
            .context("submitting")?;
        let Submission::Accepted(id) = submission else {
            bail!("execution {n} was not accepted: {submission:?}");
        };
        let record = runtime.wait(id).await.context("waiting")?;
        if record.status != ExecutionStatus::Succeeded {
            bail!(
                "execution {id} ended {:?}: {:?}",
                record.status,
                record.error
            );
        }
        let done = progress.done.fetch_add(1, Ordering::Relaxed) + 1;
        if done.is_multiple_of(options.report_every) {
            progress.report(done, file);
        }
        n += options.in_flight;
    }
    Ok(())
}

async fn soak(options: Options) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("creating a temp dir")?;
    let dir = options
        .data
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("soak.redb");
    let redb = Arc::new(
        RedbStore::open(&file, RedbOptions::default())
            .with_context(|| format!("opening {}", file.display()))?,
    );
    let retention = Retention {
        keep: 10_000,
        max_age: None,
    };
    let config = RuntimeConfig {
        retention,
        prune_every: 1_000,
        ..RuntimeConfig::default()
    };
    let store: Arc<dyn Store> = redb.clone();
    let runtime = runtime(store, config, &[GUARDED_TWO]);
    println!(
        "soak: {} executions of {WORKFLOW:?}, {} in flight, retention keep {}, prune every {}, file {}",
        options.executions,
        options.in_flight,
        retention.keep,
        1_000,
        file.display()
    );
    let rss_start = memory_kib("VmRSS:");
    let progress = Progress {
        done: AtomicU64::new(0),
        start: Instant::now(),
        interval: std::sync::Mutex::new((Instant::now(), 0)),
        max_rss_kib: AtomicU64::new(rss_start),
        max_file: AtomicU64::new(0),
    };
    let lanes = (0..options.in_flight.min(options.executions))
        .map(|first| lane(&runtime, &progress, &options, &file, first));
    for result in join_all(lanes).await {
        result?;
    }
    let elapsed = progress.start.elapsed();
    let done = progress.done.load(Ordering::Relaxed);
    runtime.shutdown().await;
    // Let a last prune land, then count what the store keeps.
    redb.prune(retention, reactor_core::engine::Timestamp::now())
        .await
        .context("final prune")?;
    let kept = redb
        .executions(&ExecutionQuery::default())
        .await
        .context("counting kept executions")?
        .len();
    let stats = runtime.stats();
    redb.close().await.context("closing the store")?;
    let size = file_size(&file);
    progress.max_file.fetch_max(size, Ordering::Relaxed);
    println!(
        "summary: {done} executions in {:.1} s = {:.0}/s; succeeded {}, failed {}; {} redb commits ({:.1} executions per commit); \
         rss start {:.1} MiB, end {:.1} MiB, max sampled {:.1} MiB, peak (VmHWM) {:.1} MiB; \
         redb file end {:.1} MiB, max sampled {:.1} MiB; executions kept {kept}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        stats.succeeded.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        redb.commits(),
        done as f64 / redb.commits().max(1) as f64,
        rss_start as f64 / 1024.0,
        memory_kib("VmRSS:") as f64 / 1024.0,
        progress.max_rss_kib.load(Ordering::Relaxed) as f64 / 1024.0,
        memory_kib("VmHWM:") as f64 / 1024.0,
        mib(size),
        mib(progress.max_file.load(Ordering::Relaxed)),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    tokio.block_on(soak(options))
}
