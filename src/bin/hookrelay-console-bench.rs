//! `hookrelay-console-bench`: how fast the admin API answers what the web console asks for,
//! with many events stored.
//!
//! It starts a relay in this process on a store directory, fills it over HTTP with unique
//! StatusGator v3, PagerDuty v3 and StatusGator v1 webhooks (every delivery left pending for a
//! paused target, as during a long outage), then asks the admin API, one request at a time,
//! for the console's pages: the newest 50 events, pages filtered by source, by a type and a
//! delivery status nothing matches (the worst case: each request looks at its whole budget),
//! a page from the middle of the store, a time window, one event, and the targets. It prints
//! one JSON line per request kind with the answer time's p50, p90 and max.
//!
//! ```sh
//! cargo build --release
//! ./target/release/hookrelay-console-bench --events 1000000 --dir /tmp/console-bench
//! ```
//! With `--dir`, a store already filled to `--events` is measured again without refilling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[path = "bench-support/paused.rs"]
mod paused;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Time the admin API's answers to the web console with many events stored")]
struct Args {
    /// Events to store.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Store directory; kept afterwards, and reused when already filled. Default: a new
    /// directory under the system's temporary directory, removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Requests timed per kind.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Concurrent connections filling the store.
    #[arg(long, default_value_t = 64)]
    connections: u64,
}

/// The `n`th webhook: path, content type, body; each unique, so none is a duplicate.
fn webhook(n: u64) -> (&'static str, &'static str, String) {
    match n % 3 {
        0 => ("/sg", "application/json", json!({
            "type": "StatusChange", "recorded_at": "2025-07-17T02:20:45Z",
            "service": {"id": format!("svc{}", n % 97), "name": format!("Service {}", n % 97), "slug": format!("service-{}", n % 97)},
            "monitor": {"id": format!("mon{}", n % 1000), "type": "ServiceMonitor", "display_name": format!("Service {}", n % 97)},
            "status": if n % 2 == 0 { "down" } else { "up" }, "previous_status": "warn",
            "message": format!("Elevated error rates, report {n}"),
            "details": "We are investigating elevated error rates on the API and will post updates here.",
        }).to_string()),
        1 => ("/pd", "application/json", json!({"event": {
            "id": format!("evt{n}"), "event_type": "incident.triggered", "resource_type": "incident",
            "occurred_at": "2025-07-17T02:20:45Z",
            "data": {"id": format!("inc{n}"), "type": "incident", "number": n, "status": "triggered",
                "title": format!("Disk space low on db-{}", n % 50), "urgency": "high",
                "service": {"id": "PSVC", "summary": "database", "type": "service_reference"}},
        }}).to_string()),
        _ => ("/sg", "application/x-www-form-urlencoded", format!(
            "service_name=CloudFlare&favicon_url=&status_page_url=https%3A%2F%2Fwww.cloudflarestatus.com%2F&home_page_url=http%3A%2F%2Fwww.cloudflare.com&current_status=warn&last_status=up&occurred_at=2016-05-19T09%3A26%3A{:02}%2B00%3A00&n={n}",
            n % 60
        )),
    }
}

async fn fill(base: &str, from: u64, to: u64, connections: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(from));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, client, base) = (next.clone(), client.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                let (path, ct, body) = webhook(n);
                let resp = client
                    .post(format!("{base}{path}"))
                    .header("content-type", ct)
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "webhook {n}: {}", resp.status());
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "stored {} events in {:.0} s",
        to - from,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times `rounds` requests for `path` (after one untimed), in milliseconds, sorted.
async fn time(
    client: &reqwest::Client,
    url: &str,
    rounds: usize,
) -> anyhow::Result<(Vec<f64>, Value)> {
    let mut times = Vec::with_capacity(rounds);
    let mut last = Value::Null;
    for i in 0..=rounds {
        let started = Instant::now();
        let resp = client.get(url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        last = serde_json::from_slice(&resp.bytes().await?)?;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times, last))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("hookrelay-console-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4096\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = \"{}\"\nmin_free_bytes = 0\n\
         [[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n\
         [[sources]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\n\
         [[targets]]\nname = \"down\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/down\"\n",
        dir.join("data").display()
    );
    // Nothing is sent: every delivery stays pending.
    let paused::Paused {
        relay,
        base,
        admin,
        client,
    } = paused::start(&config, &dir, "down").await?;

    let marker = dir.join("filled");
    let filled: u64 = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let first_ms = std::fs::read_to_string(dir.join("first_ms"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let first_ms: u64 = match first_ms {
        Some(ms) => ms,
        None => {
            let ms = hookrelay::deliver::now_ms();
            std::fs::write(dir.join("first_ms"), ms.to_string())?;
            ms
        }
    };
    if filled < args.events {
        fill(&base, filled, args.events, args.connections).await?;
        std::fs::write(&marker, args.events.to_string())?;
        std::fs::write(
            dir.join("last_ms"),
            hookrelay::deliver::now_ms().to_string(),
        )?;
    }
    // When the fill ended: the time window and the middle page are placed by it.
    let last_ms: u64 = std::fs::read_to_string(dir.join("last_ms"))
        .context("the fill's end time")?
        .trim()
        .parse()?;
    let middle = first_ms + (last_ms.saturating_sub(first_ms)) / 2;

    let newest = time(&client, &format!("{admin}/events?limit=50"), 1)
        .await?
        .1;
    let id = newest["events"][0]["id"]
        .as_str()
        .context("an event")?
        .to_owned();
    let kinds = [
        ("newest 50", "/events?limit=50".to_owned()),
        ("source=pd", "/events?limit=50&source=pd".to_owned()),
        (
            "type nothing has",
            "/events?limit=50&type=early_warning".to_owned(),
        ),
        (
            "status nothing has",
            "/events?limit=50&status=dead".to_owned(),
        ),
        (
            "until the middle of the fill",
            format!("/events?limit=50&until={middle}"),
        ),
        (
            "the last minute",
            format!("/events?limit=50&since={}", last_ms.saturating_sub(60_000)),
        ),
        ("one event", format!("/events/{id}")),
        ("targets", "/targets".to_owned()),
    ];
    for (what, path) in kinds {
        let (t, answer) = time(&client, &format!("{admin}{path}"), args.rounds).await?;
        let pct = |p: f64| (t[((t.len() - 1) as f64 * p).round() as usize] * 100.0).round() / 100.0;
        println!(
            "{}",
            json!({
                "events_stored": args.events, "request": what, "path": path,
                "shown": answer["events"].as_array().map(Vec::len),
                "examined": answer["examined"],
                "ms": {"p50": pct(0.5), "p90": pct(0.9), "max": pct(1.0)},
            })
        );
    }
    relay.shutdown().await?;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
