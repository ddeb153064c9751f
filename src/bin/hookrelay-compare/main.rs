//! `hookrelay-compare`: hookrelay side by side with nginx, in one run, under the same load.
//!
//! It writes a wrk Lua script (PagerDuty V3 webhooks, each with its own `X-Webhook-Id` and
//! event id, incidents drawn in turn from `--incidents`, so ordering keys repeat), starts a
//! counting sink in this process, and drives with wrk, one after the other:
//! 1. the sink alone: the generator's ceiling, which must far exceed nginx's rate;
//! 2. nginx (Debian's package, started here) as a plain reverse proxy in front of the sink;
//! 3. the release relay with one webhook target on the sink, until every acknowledged event
//!    reached it;
//! 4. the relay with `--targets` targets (CPU per extra target);
//! 5. with `--pending N`: the relay with one target and one that is down, on an empty queue
//!    and then on N deliveries pending for the down target, with startup after a crash and
//!    after a clean stop.
//!
//! It prints a markdown table of every figure with its ratio to nginx's, and a JSON line.
//!
//! ```sh
//! cargo build --release && ./target/release/hookrelay-compare --seconds 10
//! ```

mod nginx;
#[path = "../bench-support/procs.rs"]
mod procs;
mod relay;
mod report;
mod sink;
mod wrk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use report::Measured;
use sink::Sink;
use wrk::Wrk;

#[derive(Parser, Clone)]
#[command(about = "hookrelay against nginx as a plain proxy, both driven by wrk in one run")]
pub struct Args {
    /// Length of each loaded run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk's connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk's threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Targets of the fan-out run (CPU per extra target); 1 leaves that run out.
    #[arg(long, default_value_t = 5)]
    targets: usize,
    /// Delivery lanes per target (the targets' `concurrency`).
    #[arg(long, default_value_t = 16)]
    lanes: usize,
    /// Incidents the webhooks are drawn from in turn (ordering keys repeat); 0: every webhook
    /// its own incident.
    #[arg(long, default_value_t = 1000)]
    incidents: u64,
    /// Also measure with this many deliveries pending for a down target (e.g. 1000000; the
    /// store takes about 5 KB per pending delivery and the fill minutes).
    #[arg(long, default_value_t = 0)]
    pending: u64,
    /// Longest wait for a relay's deliveries after its load, in seconds.
    #[arg(long, default_value_t = 600)]
    drain_timeout: u64,
    /// The relay binary; default: `hookrelay` beside this one.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// wrk; default: `wrk` on PATH.
    #[arg(long)]
    wrk: Option<PathBuf>,
    /// nginx; default: `nginx` on PATH or in /usr/sbin.
    #[arg(long)]
    nginx: Option<PathBuf>,
}

/// The run's temporary directory, removed when the run ends (kept with
/// `HOOKRELAY_COMPARE_KEEP=1`: the wrk script, nginx's configuration and error log).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HOOKRELAY_COMPARE_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn find(name: &str, given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// CPU counters read before and after a run.
struct Clocks {
    server: u64,
    own: (u64, u64),
    wrk_threads: u64,
}

impl Clocks {
    fn read(wrk: &Wrk, pids: &[u32]) -> Clocks {
        let me = std::process::id();
        Clocks {
            server: procs::cpu_us(pids),
            // This process (the sink), and its children that ended and were waited for (wrk,
            // once a run is over).
            own: (procs::stat_us(me, [11, 12]), procs::stat_us(me, [13, 14])),
            wrk_threads: wrk.threads as u64,
        }
    }

    fn since(&self, now: &Clocks) -> report::Cpu {
        report::Cpu {
            server_us: now.server.saturating_sub(self.server),
            sink_us: now.own.0.saturating_sub(self.own.0),
            wrk_us: now.own.1.saturating_sub(self.own.1),
            wrk_threads: self.wrk_threads,
        }
    }
}

/// Loads a server that answers only after the sink has the request (the sink itself, or
/// nginx in front of it); `pids` are the processes whose CPU is counted.
async fn plain_run(
    wrk: &Wrk,
    sink: &Sink,
    url: &str,
    seconds: u64,
    pids: &[u32],
) -> anyhow::Result<Measured> {
    sink.reset();
    let load_before = procs::load_average();
    let start = Clocks::read(wrk, pids);
    let run = wrk.run(url, seconds).await?;
    let ended = Instant::now();
    let cpu = start.since(&Clocks::read(wrk, pids));
    let (reached, last) = sink.plain();
    let after = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(ended));
    let mut m = Measured::new(
        &run,
        after,
        cpu,
        reached,
        0,
        [load_before, procs::load_average()],
    );
    m.sink_connections = sink.connections();
    Ok(m)
}

/// Loads a relay, then waits until every acknowledged event reached each of its `live`
/// targets. CPU is the relay's from the start of the load until then.
async fn relay_run(
    wrk: &Wrk,
    sink: &Sink,
    setup: &relay::Setup,
    relay: &relay::Relay,
    args: &Args,
    live: usize,
) -> anyhow::Result<Measured> {
    sink.reset();
    let load_before = procs::load_average();
    let start = Clocks::read(wrk, &[relay.pid()]);
    let threads_start = relay::thread_cpu_us(relay.pid());
    let run = wrk.run(&setup.url(), args.seconds).await?;
    let ended = Instant::now();
    let wrk_us = start.since(&Clocks::read(wrk, &[])).wrk_us;
    let acked = run.acked();
    let paths: Vec<String> = (0..live).map(|i| format!("/t{i}")).collect();
    let deadline = ended + Duration::from_secs(args.drain_timeout);
    let delivered = || paths.iter().map(|p| sink.delivered(p)).collect::<Vec<_>>();
    // Until every target has every acknowledged event (or the deadline passes) ...
    while delivered().iter().any(|d| d.distinct < acked) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = report::Cpu {
        wrk_us,
        ..start.since(&Clocks::read(wrk, &[relay.pid()]))
    };
    let threads = relay::thread_cpu_us(relay.pid());
    // ... and then a moment more for the events the relay stored while wrk stopped (wrk
    // drops the answers still in flight when its time is up).
    let mut seen = delivered();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = delivered();
        if now.iter().zip(&seen).all(|(a, b)| a.distinct == b.distinct) {
            break;
        }
        seen = now;
    }
    let last = seen.iter().filter_map(|d| d.last_new).max();
    let after = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(ended));
    let reached = seen.iter().map(|d| d.distinct).min().unwrap_or(acked);
    let duplicates = seen.iter().map(|d| d.duplicates).sum();
    let mut m = Measured::new(
        &run,
        after,
        cpu,
        reached,
        duplicates,
        [load_before, procs::load_average()],
    );
    m.peak_rss_mb = Some(procs::peak_rss_kb(relay.pid()) / 1024);
    m.sink_connections = sink.connections();
    m.threads_us_per_event = threads
        .into_iter()
        .map(|(kind, us)| {
            let before = threads_start.get(&kind).copied().unwrap_or(0);
            (kind, us.saturating_sub(before) as f64 / acked.max(1) as f64)
        })
        .collect();
    Ok(m)
}

/// Stores webhooks until at least `n` are acknowledged (the relay has only the down target,
/// so each is one pending delivery). Returns how many.
async fn fill(wrk: &Wrk, url: &str, n: u64) -> anyhow::Result<u64> {
    // A short first run gives the rate; the next ones are sized from it.
    let (started, mut acked, mut seconds) = (Instant::now(), 0, 3);
    while acked < n {
        let run = wrk.run(url, seconds).await?;
        anyhow::ensure!(
            run.acked() > 0,
            "the relay acknowledged nothing while filling"
        );
        acked += run.acked();
        let left = n.saturating_sub(acked) as f64;
        // Four fifths of what is left at the rate just seen, so the last runs are short and
        // the backlog ends close to `n`.
        seconds = (0.8 * left / run.acked_per_s()).ceil().clamp(1.0, 60.0) as u64;
        eprintln!(
            "  {acked} of {n} stored in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(acked)
}

/// The backlog case: the relay with one target and one that is down, on an empty queue and
/// then with `args.pending` deliveries pending for the down target.
async fn backlog(
    wrk: &Wrk,
    sink: &Sink,
    bin: &Path,
    dir: &Path,
    args: &Args,
) -> anyhow::Result<report::Backlog> {
    eprintln!("hookrelay, 1 target + 1 down, empty queue ...");
    let setup = relay::Setup::new(bin, dir.join("relay-empty"), sink.port, args.lanes)?;
    setup.configure(1, true)?;
    let relay = setup.start()?;
    let empty = relay_run(wrk, sink, &setup, &relay, args, 1).await?;
    relay.stop();
    std::fs::remove_dir_all(&setup.dir)?;

    eprintln!(
        "hookrelay: filling a backlog of {} for the down target ...",
        args.pending
    );
    let setup = relay::Setup::new(bin, dir.join("relay-backlog"), sink.port, args.lanes)?;
    setup.configure(0, true)?;
    let relay = setup.start()?;
    let pending = fill(wrk, &setup.url(), args.pending).await?;
    // A crash right after the fill: everything the fill wrote is still to be read at startup.
    relay.crash();
    setup.configure(1, true)?;
    let relay = setup.start()?;
    let after_crash = relay.startup;
    // What recovery left to do in the background is done before the clean stop.
    relay.wait_idle(Duration::from_secs(120)).await;
    relay.stop();
    let relay = setup.start()?;
    let after_stop = relay.startup;
    eprintln!(
        "  startup after a crash {} ms, after a clean stop {} ms; loading ...",
        after_crash.as_millis(),
        after_stop.as_millis()
    );
    let loaded = relay_run(wrk, sink, &setup, &relay, args, 1).await?;
    relay.stop();
    Ok(report::Backlog {
        pending,
        empty,
        loaded,
        startup_after_crash_ms: after_crash.as_millis() as u64,
        startup_after_stop_ms: after_stop.as_millis() as u64,
        store_bytes: procs::dir_bytes(&setup.dir.join("data")),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wrk_bin = find("wrk", args.wrk.clone()).context(
        "wrk is not installed (Debian: apt-get install -y wrk); this benchmark has no other generator",
    )?;
    let nginx_bin = find("nginx", args.nginx.clone());
    if nginx_bin.is_none() {
        eprintln!(
            "nginx is not installed (Debian: apt-get install -y nginx): no baseline, no ratios"
        );
    }
    let relay_bin = match &args.relay {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("hookrelay"),
    };
    anyhow::ensure!(
        relay_bin.is_file(),
        "no relay at {} (cargo build --release)",
        relay_bin.display()
    );
    if relay_bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!("warning: {} looks like a debug build", relay_bin.display());
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("hookrelay-compare-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let sink = Sink::start()?;
    let wrk = Wrk::new(
        wrk_bin,
        &dir.0,
        args.threads,
        args.connections,
        args.incidents,
    )?;
    let sink_url = format!("http://127.0.0.1:{}", sink.port);

    eprintln!("the sink alone (the generator's ceiling) ...");
    let ceiling = plain_run(&wrk, &sink, &sink_url, args.seconds, &[]).await?;

    let nginx = match &nginx_bin {
        Some(bin) => {
            eprintln!("nginx in front of the sink ...");
            let n = nginx::Nginx::start(bin, &dir.0, sink.port, args.connections)?;
            let m = plain_run(
                &wrk,
                &sink,
                &format!("http://127.0.0.1:{}", n.port),
                args.seconds,
                &n.pids(),
            )
            .await;
            n.stop();
            Some(m?)
        }
        None => None,
    };

    let mut fanouts = vec![1];
    if args.targets > 1 {
        fanouts.push(args.targets);
    }
    let mut relays = Vec::new();
    for &targets in &fanouts {
        eprintln!("hookrelay with {} ...", report::targets(targets));
        let setup = relay::Setup::new(
            &relay_bin,
            dir.0.join(format!("relay-{targets}")),
            sink.port,
            args.lanes,
        )?;
        setup.configure(targets, false)?;
        let relay = setup.start()?;
        let m = relay_run(&wrk, &sink, &setup, &relay, &args, targets).await;
        relay.stop();
        std::fs::remove_dir_all(&setup.dir)?;
        relays.push((targets, m?));
    }
    let backlog = match args.pending {
        0 => None,
        _ => Some(backlog(&wrk, &sink, &relay_bin, &dir.0, &args).await?),
    };

    let report = report::Report {
        args: &args,
        wrk_path: wrk.bin.display().to_string(),
        nginx_path: nginx_bin.map(|p| p.display().to_string()),
        body_bytes: wrk::body_bytes()?,
        ceiling,
        nginx,
        relays,
        backlog,
    };
    report.print();
    let backlog_runs = report.backlog.iter().flat_map(|b| [&b.empty, &b.loaded]);
    let lost: u64 = report
        .relays
        .iter()
        .map(|(_, m)| m)
        .chain(backlog_runs)
        .map(|m| m.lost)
        .sum();
    anyhow::ensure!(
        lost == 0,
        "{lost} acknowledged events never reached a target"
    );
    Ok(())
}
