//! `sse-fanout`: how much 1,000 live-stream subscribers slow the engine down.
//!
//! One process: a runtime (in-memory journal, so the engine is as fast as it gets and the
//! stream's share of the work is as large as it gets) observed by the hub's
//! [`LiveStream`] and [`EngineMetrics`], the hub's SSE response served over real HTTP on
//! 127.0.0.1, and N subscribers that connect over TCP and read everything. Executions of
//! `mixed-five` (two side-effecting steps: 6 stream events each) run with `--concurrency`
//! callers waiting for each end; throughput is measured with no subscriber and with N,
//! alternating, `--rounds` times.
//!
//! ```text
//! cargo run --release -p reactor-benches --bin sse-fanout -- \
//!     --subscribers 1000 --executions 20000 --concurrency 64 --rounds 3
//! ```
//!
//! Subscribers run in a child process (as remote browsers would), reading into a 64 KiB
//! buffer without parsing; on a 2-core machine they still take CPU from the engine, so the
//! throughput change is an upper bound. The CPU time per execution of the measuring process
//! (user + system, from /proc) is the hub side alone and is less disturbed by other load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reactor_benches::{MIXED_FIVE, event, runtime};
use reactor_core::engine::{Fanout, Runtime, RuntimeConfig, Submission};
use reactor_core::store::MemoryStore;
use reactor_hub::metrics::{EngineMetrics, Telemetry};
use reactor_hub::stream::{LiveStream, sse_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The hub's allocator (reactor-hub's `main.rs`), so that the figures are the hub's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Options {
    subscribers: usize,
    executions: u64,
    concurrency: u64,
    rounds: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        subscribers: 1000,
        executions: 20_000,
        concurrency: 64,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--subscribers" => options.subscribers = value.parse()?,
            "--executions" => options.executions = value.parse()?,
            "--concurrency" => options.concurrency = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(options)
}

/// CPU time this process used so far (user + system), seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `total` executions with `concurrency` callers; returns executions per second and
/// the process's CPU microseconds per execution (subscriber readers included).
async fn measure(runtime: &Runtime, total: u64, concurrency: u64) -> anyhow::Result<(f64, f64)> {
    let next = Arc::new(AtomicU64::new(0));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (runtime, next) = (runtime.clone(), next.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let (submission, watch) = runtime
                    .submit_watched("mixed-five", event(n), serde_json::json!({}))
                    .await?;
                if !matches!(submission, Submission::Accepted(_)) {
                    bail!("not accepted: {submission:?}");
                }
                if let Some(watch) = watch {
                    watch.finished().await?;
                }
            }
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu) * 1e6 / total as f64;
    Ok((rate, cpu_us))
}

/// Child mode (`--client ADDR N`): N raw SSE readers, until killed. They run in their own
/// process so that the measured process's CPU time is the hub side only (as with remote
/// browsers); they still share the machine's cores.
async fn client_main(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<()> {
    {
        let mut readers = Vec::new();
        for _ in 0..n {
            readers.push(tokio::spawn(async move {
                let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let request =
                    "GET /stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n";
                if socket.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(k) = socket.read(&mut buffer).await {
                    if k == 0 {
                        return;
                    }
                }
            }));
        }
        for reader in readers {
            let _ = reader.await;
        }
    }
    Ok(())
}

/// Starts `n` readers of `addr` in a child process.
fn connect(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args(["--client", &addr.to_string(), &n.to_string()])
        .spawn()?)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        let addr = args.get(2).context("--client ADDR N")?.parse()?;
        let n = args.get(3).context("--client ADDR N")?.parse()?;
        return client_main(addr, n).await;
    }
    let options = options()?;
    let live = LiveStream::new();
    let engine = Arc::new(EngineMetrics::new());
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        RuntimeConfig::default(),
        &[MIXED_FIVE],
    )
    .with_observer(Arc::new(Fanout(vec![
        engine.clone(),
        Arc::new(live.clone()),
    ])));

    let server_stop = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::new(
        engine.clone(),
        runtime.clone(),
        None,
        std::env::temp_dir(),
    ));
    tokio::spawn(live.clone().run(Some(telemetry), server_stop.clone()));
    let app = {
        let (live, stop) = (live.clone(), server_stop.clone());
        axum::Router::new().route(
            "/stream",
            axum::routing::get(move || {
                let (live, stop) = (live.clone(), stop.clone());
                async move { sse_response(&live, None, stop) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Warm-up.
    measure(&runtime, options.executions / 4, options.concurrency).await?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut cpu_without = Vec::new();
    let mut cpu_with = Vec::new();
    for round in 0..options.rounds {
        let (base, base_cpu) = measure(&runtime, options.executions, options.concurrency).await?;
        without.push(base);
        cpu_without.push(base_cpu);

        let mut clients = connect(addr, options.subscribers)?;
        let subscribers = live.subscribers();
        let deadline = Instant::now() + Duration::from_secs(30);
        while subscribers.load(Ordering::Relaxed) < options.subscribers as u64 {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} subscribers connected",
                    subscribers.load(Ordering::Relaxed),
                    options.subscribers
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (loaded, loaded_cpu) =
            measure(&runtime, options.executions, options.concurrency).await?;
        with.push(loaded);
        cpu_with.push(loaded_cpu);
        let _ = clients.kill();
        let _ = clients.wait();
        while subscribers.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "round {round}: {base:.0} exec/s ({base_cpu:.1} CPU-µs each) without subscribers, {loaded:.0} exec/s ({loaded_cpu:.1} CPU-µs) with {} ({:+.1} %)",
            options.subscribers,
            (loaded / base - 1.0) * 100.0,
        );
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    // Rounds are paired (each loaded run right after its baseline), so the median of the
    // per-round changes is what drifting background load disturbs least.
    let mut changes: Vec<f64> = without
        .iter()
        .zip(&with)
        .map(|(base, loaded)| (loaded / base - 1.0) * 100.0)
        .collect();
    let change = median(&mut changes);
    let (base, loaded) = (median(&mut without), median(&mut with));
    let (base_cpu, loaded_cpu) = (median(&mut cpu_without), median(&mut cpu_with));
    println!(
        "median CPU per execution: {base_cpu:.1} µs without, {loaded_cpu:.1} µs with {} subscribers: {:+.1} %",
        options.subscribers,
        (loaded_cpu / base_cpu - 1.0) * 100.0
    );
    println!(
        "median: {base:.0} exec/s without, {loaded:.0} exec/s with {} subscribers; median per-round change {change:+.1} % ({} executions x {} rounds, concurrency {})",
        options.subscribers, options.executions, options.rounds, options.concurrency,
    );
    server_stop.cancel();
    runtime.shutdown().await;
    Ok(())
}
