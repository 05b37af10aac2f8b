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
//! Subscribers run on their own thread and runtime (as remote browsers would not share the
//! hub's executor), reading into a 64 KiB buffer without parsing; on a 2-core machine they
//! still share the CPU, so the figure is an upper bound on the slowdown.

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

/// Runs `total` executions with `concurrency` callers; returns executions per second.
async fn measure(runtime: &Runtime, total: u64, concurrency: u64) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
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
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Connects `n` raw SSE readers to `addr`; returns the bytes they read and a stop token.
fn connect(
    addr: std::net::SocketAddr,
    n: usize,
) -> (
    Arc<AtomicU64>,
    CancellationToken,
    std::thread::JoinHandle<()>,
) {
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (b, s) = (bytes.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let mut readers = Vec::new();
            for _ in 0..n {
                let (bytes, stop) = (b.clone(), s.clone());
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
                    loop {
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return,
                            read = socket.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(k) => { bytes.fetch_add(k as u64, Ordering::Relaxed); }
                            },
                        }
                    }
                }));
            }
            for reader in readers {
                let _ = reader.await;
            }
        });
    });
    (bytes, stop, thread)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let mut delivered = 0u64;
    for round in 0..options.rounds {
        let base = measure(&runtime, options.executions, options.concurrency).await?;
        without.push(base);

        let (bytes, stop, thread) = connect(addr, options.subscribers);
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
        let loaded = measure(&runtime, options.executions, options.concurrency).await?;
        with.push(loaded);
        // Let the readers drain what is in flight before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let read = bytes.load(Ordering::Relaxed);
        delivered += read;
        stop.cancel();
        let _ = thread.join();
        while subscribers.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "round {round}: {base:.0} exec/s without subscribers, {loaded:.0} exec/s with {} ({:+.1} %), {:.1} MiB streamed",
            options.subscribers,
            (loaded / base - 1.0) * 100.0,
            read as f64 / (1024.0 * 1024.0)
        );
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let (base, loaded) = (median(&mut without), median(&mut with));
    println!(
        "median: {base:.0} exec/s without, {loaded:.0} exec/s with {} subscribers: {:+.1} % ({} executions x {} rounds, concurrency {}, {:.1} MiB streamed in all)",
        options.subscribers,
        (loaded / base - 1.0) * 100.0,
        options.executions,
        options.rounds,
        options.concurrency,
        delivered as f64 / (1024.0 * 1024.0)
    );
    server_stop.cancel();
    runtime.shutdown().await;
    Ok(())
}
