//! `hookrelay-bench`: measures a release-built relay end to end on this machine.
//!
//! It starts a local sink and a relay child (the `hookrelay` binary beside this one), drives a
//! mix of the sample payload shapes (StatusGator v3, PagerDuty v3, StatusGator v1 form), each
//! made unique, over 127.0.0.1 at a chosen concurrency for a bounded time, then waits for every
//! acknowledged event to reach every target and reports:
//! durably acknowledged webhooks/s, ack latency p50/p99/p99.9, end-to-end lag to the sink
//! (p50/p99), delivery throughput, peak RSS of the relay, disk bytes per event, lost and
//! duplicated deliveries, and (with `--pending`) startup time with that backlog.
//!
//! With `--url` it drives any endpoint instead (e.g. nginx proxying to `--sink-port`): the
//! baseline a relay that writes to disk can approach. Then only throughput and latency apply.
//!
//! ```sh
//! cargo run --release --bin hookrelay-bench -- --seconds 10 --connections 64 --targets 1
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[path = "bench-support/procs.rs"]
mod procs;

#[derive(Parser, Clone)]
#[command(about = "Benchmark a hookrelay release build on this machine")]
struct Args {
    /// Length of the measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections sending webhooks.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Webhook targets, all pointing at the sink.
    #[arg(long, default_value_t = 1)]
    targets: usize,
    /// Approximate size of each request body.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Deliveries left pending (for a target that is down) before the measured run.
    #[arg(long, default_value_t = 0)]
    pending: u64,
    /// Send at most this many webhooks per second in all (0: as fast as the relay answers).
    /// Below the relay's capacity this shows what a steady load costs and whether delivery
    /// keeps up with it.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Delivery lanes per target (the targets' `concurrency`).
    #[arg(long, default_value_t = 16)]
    lanes: usize,
    /// Add a target that is down during the run.
    #[arg(long)]
    down_target: bool,
    /// Drive this URL instead of starting a relay (baseline mode).
    #[arg(long)]
    url: Option<String>,
    /// Port for the sink (baseline mode: where the proxy sends requests).
    #[arg(long, default_value_t = 0)]
    sink_port: u16,
    /// Store events in PostgreSQL: a server URL ending in a database name. The benchmark
    /// makes a fresh database beside it for the run and drops it afterwards.
    #[arg(long)]
    postgres: Option<String>,
    /// The relay binary; default: `hookrelay` beside this one.
    #[arg(long)]
    relay: Option<PathBuf>,
}

/// A database of the benchmark's own on a PostgreSQL server.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(server: &str) -> anyhow::Result<Database> {
        let name = format!("hookrelay_bench_{}", std::process::id());
        Self::admin(server, &format!("DROP DATABASE IF EXISTS {name}")).await?;
        Self::admin(server, &format!("CREATE DATABASE {name}")).await?;
        let base = server
            .rsplit_once('/')
            .context("the PostgreSQL URL must end in a database name")?
            .0;
        Ok(Database {
            server: server.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn admin(server: &str, sql: &str) -> anyhow::Result<()> {
        let (client, conn) = tokio_postgres::connect(server, tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        client.batch_execute(sql).await?;
        drop(client);
        let _ = conn.await;
        Ok(())
    }

    async fn size(&self) -> anyhow::Result<u64> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let size: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?
            .get(0);
        drop(client);
        let _ = conn.await;
        Ok(size.max(0) as u64)
    }

    async fn drop(self) -> anyhow::Result<()> {
        Self::admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {}", self.name),
        )
        .await
    }
}

/// First arrival of each event id at the sink, per target path.
type Arrivals = Arc<Mutex<HashMap<String, HashMap<String, (Instant, u32)>>>>;

async fn sink(port: u16, arrivals: Arrivals, received: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (arrivals, received) = (arrivals.clone(), received.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (arrivals, received) = (arrivals.clone(), received.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        // Read the whole body, or the connection cannot be kept alive.
                        let _ = http_body_util::BodyExt::collect(body).await;
                        received.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = parts
                            .headers
                            .get("x-hookrelay-event-id")
                            .and_then(|v| v.to_str().ok())
                        {
                            let mut a = arrivals.lock().unwrap();
                            let seen = a.entry(parts.uri.path().to_owned()).or_default();
                            seen.entry(id.to_owned()).or_insert((Instant::now(), 0)).1 += 1;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// A unique body of roughly `size` bytes, cycling through three payload shapes.
fn body(n: u64, size: usize) -> (&'static str, &'static str, String) {
    let pad = "x".repeat(size.saturating_sub(220));
    match n % 3 {
        0 => ("/sg", "application/json", format!(
            "{{\"type\":\"StatusChange\",\"recorded_at\":\"2025-07-17T02:20:45Z\",\"service\":{{\"id\":\"s{}\",\"name\":\"Service {}\"}},\"monitor\":{{\"id\":\"m{}\"}},\"status\":\"down\",\"previous_status\":\"up\",\"message\":\"n{n}\",\"details\":\"{pad}\"}}",
            n % 50, n % 50, n % 50
        )),
        1 => ("/pd", "application/json", format!(
            "{{\"event\":{{\"id\":\"e{n}\",\"event_type\":\"incident.triggered\",\"resource_type\":\"incident\",\"occurred_at\":\"2021-06-04T13:35:29.781Z\",\"data\":{{\"id\":\"P{}\",\"type\":\"incident\",\"status\":\"triggered\",\"title\":\"{pad}\",\"number\":{n}}}}}}}",
            n % 50
        )),
        _ => ("/sg", "application/x-www-form-urlencoded", format!(
            "service_name=Service+{n}&current_status=down&last_status=up&occurred_at=2016-05-19T09%3A26%3A31%2B00%3A00&home_page_url=http%3A%2F%2Fexample.com%2F{pad}"
        )),
    }
}

struct Load {
    latencies_us: Vec<u32>,
    /// The slowest acknowledgement and when, from the start of the load, it was sent: a
    /// stall at the start and one in the middle of a run call for different explanations.
    slowest: (Duration, Duration),
    acked: Vec<(String, Instant)>,
    errors: u64,
    elapsed: Duration,
}

async fn drive(
    base: &str,
    connections: usize,
    seconds: u64,
    body_bytes: usize,
    rate: u64,
    counter: Arc<AtomicU64>,
    relay_mode: bool,
) -> Load {
    // Each connection sends on its own schedule, spread so the total is `rate` per second;
    // one that falls behind sends at once (it cannot send faster than it is answered).
    let every = (rate > 0).then(|| Duration::from_secs_f64(connections as f64 / rate as f64));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (client, stop, counter, base) = (
            client.clone(),
            stop.clone(),
            counter.clone(),
            base.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut slowest = (Duration::ZERO, Duration::ZERO);
            let mut acked = Vec::new();
            let mut errors = 0;
            let mut next = tokio::time::Instant::from_std(started)
                + every.map_or(Duration::ZERO, |e| e.mul_f64(c as f64 / connections as f64));
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = every {
                    tokio::time::sleep_until(next).await;
                    next += every;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (path, ct, b) = body(n, body_bytes);
                let url = if relay_mode {
                    format!("{base}{path}")
                } else {
                    base.clone()
                };
                let t = Instant::now();
                match client
                    .post(url)
                    .header("content-type", ct)
                    .body(b)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let text = r.bytes().await.unwrap_or_default();
                        let took = t.elapsed();
                        lat.push(took.as_micros() as u32);
                        if took > slowest.0 {
                            slowest = (took, t.duration_since(started));
                        }
                        if relay_mode {
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
                                for id in v["events"].as_array().into_iter().flatten() {
                                    acked.push((id.as_str().unwrap_or_default().to_owned(), t));
                                }
                            }
                        }
                    }
                    _ => errors += 1,
                }
            }
            (lat, slowest, acked, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut load = Load {
        latencies_us: Vec::new(),
        slowest: (Duration::ZERO, Duration::ZERO),
        acked: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (lat, slowest, acked, errors) = t.await.unwrap();
        load.latencies_us.extend(lat);
        load.slowest = load.slowest.max(slowest);
        load.acked.extend(acked);
        load.errors += errors;
    }
    load.elapsed = started.elapsed();
    load
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn start_relay(bin: &Path, config: &Path) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env(
            "HOOKRELAY_LOG",
            std::env::var("HOOKRELAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits until the relay answers an HTTP request. Accepting a connection is not enough: the
/// relay binds its port before it opens the store, so the kernel accepts connections that
/// wait for the whole of startup.
fn wait_serving(port: u16, from: Instant) -> anyhow::Result<Duration> {
    while from.elapsed() < Duration::from_secs(120) {
        if procs::answers(port).is_ok() {
            return Ok(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!("the relay did not start answering")
}

fn stop(mut child: Child) {
    procs::signal(child.id(), "TERM");
    let _ = child.wait();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let arrivals: Arrivals = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    let sink_port = sink(args.sink_port, arrivals.clone(), received.clone()).await?;
    let counter = Arc::new(AtomicU64::new(0));

    if let Some(url) = &args.url {
        let load = drive(
            url,
            args.connections,
            args.seconds,
            args.body_bytes,
            args.rate,
            counter,
            false,
        )
        .await;
        let mut lat = load.latencies_us;
        lat.sort_unstable();
        let rate = lat.len() as f64 / load.elapsed.as_secs_f64();
        println!("baseline {url}: {rate:.0} requests/s answered 2xx, latency p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, errors {}, sink received {}",
            pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999), load.errors, received.load(Ordering::Relaxed));
        return Ok(());
    }

    let bin = match &args.relay {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("hookrelay"),
    };
    let dir = std::env::temp_dir().join(format!("hookrelay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = procs::free_port()?;
    let mut targets = String::new();
    for i in 0..args.targets {
        targets.push_str(&format!("[[targets]]\nname = \"t{i}\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{sink_port}/t{i}\"\nconcurrency = {}\n", args.lanes));
    }
    let closed = procs::free_port()?;
    // Unreachable: each delivery fails once and waits an hour, never suspending the target.
    let down = format!("[[targets]]\nname = \"down\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{closed}/down\"\nretry = {{ initial_delay = \"1h\" }}\nsuspend_after = 0\n");
    if args.down_target || args.pending > 0 {
        targets.push_str(&down);
    }
    let config = dir.join("relay.toml");
    let database = match &args.postgres {
        Some(server) => Some(Database::create(server).await?),
        None => None,
    };
    let backend = match &database {
        Some(db) => format!(
            "backend = \"postgres\"\nurl = \"{}\"\ninstance = \"bench\"\n",
            db.url
        ),
        None => String::new(),
    };
    let write_config = |with_targets: &str| {
        std::fs::write(&config, format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 4096\nmax_connections_per_address = 4096\n[admin]\nenabled = false\n[store]\n{backend}path = \"{}\"\nmin_free_bytes = 0\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n[[sources]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\n{with_targets}",
            dir.join("data").display()
        ))
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut startup = None;
    if args.pending > 0 {
        // Fill the backlog with only the down target configured, then restart with all.
        write_config(&down)?;
        let child = start_relay(&bin, &config)?;
        wait_serving(port, Instant::now())?;
        let filled = Instant::now();
        let fill_counter = Arc::new(AtomicU64::new(1 << 40));
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        let per = args.pending / 64 + 1;
        for _ in 0..64 {
            let (client, fill_counter, base) = (client.clone(), fill_counter.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    let n = fill_counter.fetch_add(1, Ordering::Relaxed);
                    let (path, ct, b) = body(n, 300);
                    let _ = client
                        .post(format!("{base}{path}"))
                        .header("content-type", ct)
                        .body(b)
                        .send()
                        .await;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        eprintln!(
            "backlog of {} pending filled in {:.1} s",
            per * 64,
            filled.elapsed().as_secs_f64()
        );
        stop(child);
    }
    write_config(&targets)?;
    let launched = Instant::now();
    let child = start_relay(&bin, &config)?;
    let up = wait_serving(port, launched)?;
    if args.pending > 0 {
        startup = Some(up);
    }
    let pid = child.id();
    let load_before = procs::load_average();
    let cpu_before = procs::cpu_us(&[pid]);

    let load = drive(
        &base,
        args.connections,
        args.seconds,
        args.body_bytes,
        args.rate,
        counter,
        true,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let paths: Vec<String> = (0..args.targets).map(|i| format!("/t{i}")).collect();
    loop {
        let done = {
            let a = arrivals.lock().unwrap();
            paths
                .iter()
                .all(|p| a.get(p).map_or(0, |m| m.len()) >= load.acked.len())
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = Instant::now();
    let rss = procs::peak_rss_kb(pid);
    let cpu = procs::cpu_us(&[pid]).saturating_sub(cpu_before);
    let load_after = procs::load_average();
    stop(child);
    let disk = match &database {
        Some(db) => db.size().await?,
        None => procs::dir_bytes(&dir.join("data")),
    };
    if let Some(db) = database {
        db.drop().await?;
    }

    let mut lat = load.latencies_us;
    lat.sort_unstable();
    let a = arrivals.lock().unwrap();
    let mut lags = Vec::new();
    let (mut lost, mut dups, mut deliveries) = (0u64, 0u64, 0u64);
    let mut last = load.acked.iter().map(|(_, t)| *t).max().unwrap_or(drained);
    for p in &paths {
        let seen = a.get(p).cloned().unwrap_or_default();
        for (id, sent) in &load.acked {
            match seen.get(id) {
                Some((at, n)) => {
                    lags.push(at.duration_since(*sent).as_micros() as u32);
                    dups += u64::from(n - 1);
                    deliveries += 1;
                    last = last.max(*at);
                }
                None => lost += 1,
            }
        }
    }
    lags.sort_unstable();
    let acked = load.acked.len() as f64;
    let first = load.acked.iter().map(|(_, t)| *t).min().unwrap_or(drained);
    let report = serde_json::json!({
        "connections": args.connections, "rate": args.rate, "lanes": args.lanes, "targets": args.targets, "down_target": args.down_target,
        "body_bytes": args.body_bytes, "pending": args.pending, "seconds": args.seconds,
        "acked_per_s": (acked / load.elapsed.as_secs_f64()).round(),
        "ack_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99), "p99_9": pct(&lat, 0.999),
            "max": load.slowest.0.as_secs_f64() * 1000.0, "max_sent_at_s": load.slowest.1.as_secs_f64()},
        "lag_ms": {"p50": pct(&lags, 0.5), "p99": pct(&lags, 0.99)},
        "deliveries_per_s": (deliveries as f64 / last.duration_since(first).as_secs_f64().max(0.001)).round(),
        "peak_rss_mb": rss / 1024, "disk_bytes_per_event": if acked > 0.0 { (disk as f64 / acked).round() } else { 0.0 },
        "relay_cpu_us_per_event": if acked > 0.0 { (cpu as f64 / acked).round() } else { 0.0 },
        "errors": load.errors, "lost": lost, "duplicates": dups,
        "startup_ms": startup.map(|s| s.as_millis() as u64),
        "load_average": [load_before, load_after],
    });
    println!("{report}");
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(lost == 0, "{lost} acknowledged deliveries never arrived");
    Ok(())
}
