//! `hookrelay-shaping-bench`: a long outage's backlog drained by latest-state coalescing into
//! a rate-limited receiver.
//!
//! It starts a relay in this process with one `webhook` target that coalesces
//! (`coalesce = "latest"`) and is rate limited to what a local receiver enforces (a token
//! bucket answering 429 beyond `--rate` requests a second). With the target paused, as during
//! an outage, it stores `--entities` × `--per-entity` alerts over HTTP (each entity's in order,
//! flipping down and up), then resumes the target and times the drain: it should arrive as one
//! request per entity, each the entity's last alert, with no 429. It prints one JSON line.
//!
//! ```sh
//! cargo build --release
//! ./target/release/hookrelay-shaping-bench --entities 10000 --per-entity 100 --rate 1000
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "bench-support/paused.rs"]
mod paused;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hookrelay::store::Store;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Time a coalesced backlog draining into a rate-limited receiver")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    entities: u64,
    /// Alerts stored per entity while the target is paused.
    #[arg(long, default_value_t = 100)]
    per_entity: u64,
    /// Requests a second the receiver accepts (and the target's `rate_limit`).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// The target's delivery lanes.
    #[arg(long, default_value_t = 16)]
    lanes: usize,
    /// Concurrent connections filling the backlog.
    #[arg(long, default_value_t = 64)]
    connections: u64,
}

/// What the receiver saw: answered 2xx and 429, and each entity's last message.
#[derive(Default)]
struct Seen {
    ok: u64,
    refused: u64,
    last: HashMap<String, String>,
}

/// A receiver enforcing `rate` requests a second as a token bucket holding as many.
async fn receiver(rate: f64, seen: Arc<Mutex<Seen>>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let bucket = Arc::new(Mutex::new((rate, Instant::now())));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, bucket) = (seen.clone(), bucket.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, bucket) = (seen.clone(), bucket.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let allowed = {
                                let mut b = bucket.lock().unwrap();
                                let now = Instant::now();
                                b.0 =
                                    (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
                                b.1 = now;
                                let ok = b.0 >= 1.0;
                                if ok {
                                    b.0 -= 1.0;
                                }
                                ok
                            };
                            let mut s = seen.lock().unwrap();
                            let status = if allowed {
                                s.ok += 1;
                                if let Ok(v) =
                                    serde_json::from_slice::<Value>(&body.unwrap_or_default())
                                {
                                    let e = v["e"].as_str().unwrap_or_default().to_owned();
                                    s.last
                                        .insert(e, v["m"].as_str().unwrap_or_default().to_owned());
                                }
                                200
                            } else {
                                s.refused += 1;
                                429
                            };
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            if status == 429 {
                                resp.headers_mut().insert(
                                    "retry-after",
                                    hyper::header::HeaderValue::from_static("1"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

fn alert(entity: u64, round: u64) -> String {
    json!({
        "type": "StatusChange", "recorded_at": "2025-07-17T02:20:45Z",
        "monitor": {"id": format!("e{entity}"), "type": "WebsiteMonitor", "display_name": format!("Entity {entity}")},
        "status": if round % 2 == 0 { "down" } else { "up" }, "previous_status": "up",
        "message": format!("r{round}"),
        "details": "We are investigating elevated error rates on the API and will post updates here.",
    })
    .to_string()
}

/// Stores every alert: connection `c` sends the alerts of the entities `e % connections == c`,
/// round by round, each acknowledged before the next, so each entity's order is the round's.
async fn fill(base: &str, args: &Args) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (client, base, stored) = (client.clone(), base.to_owned(), stored.clone());
        let (entities, rounds, step) = (args.entities, args.per_entity, args.connections);
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                for e in (c..entities).step_by(step as usize) {
                    let resp = client
                        .post(format!("{base}/sg"))
                        .header("content-type", "application/json")
                        .body(alert(e, round))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        resp.status().is_success(),
                        "ingest answered {}",
                        resp.status()
                    );
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let port = receiver(args.rate as f64, seen.clone()).await?;
    let dir = std::env::temp_dir().join(format!("hookrelay-shaping-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4096\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = \"{}\"\nmin_free_bytes = 0\n\
         [[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n\
         [[targets]]\nname = \"page\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         body = '{{\"e\": \"{{{{alert.entity_id}}}}\", \"m\": \"{{{{event.title}}}}\"}}'\n\
         coalesce = \"latest\"\nrate_limit = \"{}/s\"\nconcurrency = {}\n",
        dir.join("data").display(),
        args.rate,
        args.lanes
    );
    let paused::Paused {
        relay,
        base,
        admin,
        client,
    } = paused::start(&config, &dir, "page").await?;

    let started = Instant::now();
    fill(&base, &args).await?;
    let fill_s = started.elapsed().as_secs_f64();
    let target = relay.target_id("page").context("the target")?;
    let backlog = relay.store().counts(target).await?.pending;
    eprintln!("backlog of {backlog} filled in {fill_s:.1} s");

    let started = Instant::now();
    client
        .post(format!("{admin}/targets/page/resume"))
        .send()
        .await?
        .error_for_status()?;
    while relay.store().counts(target).await?.pending > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "no drain within an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = started.elapsed().as_secs_f64();
    let stats = relay.store().stats().await?;
    let report = {
        let s = seen.lock().unwrap();
        let last = format!("r{}", args.per_entity - 1);
        let stale = s.last.values().filter(|m| **m != last).count();
        json!({
            "entities": args.entities, "per_entity": args.per_entity, "backlog": backlog,
            "rate_limit_per_s": args.rate, "lanes": args.lanes,
            "fill_s": (fill_s * 10.0).round() / 10.0,
            "drain_s": (drain_s * 100.0).round() / 100.0,
            "requests_ok": s.ok, "requests_429": s.refused,
            "entities_reached": s.last.len(), "entities_not_at_their_last_alert": stale,
            "superseded": stats.superseded, "delivered": stats.done,
            "superseded_per_s": (stats.superseded as f64 / drain_s).round(),
            "peak_rss_mb": peak_rss_mb(),
        })
    };
    println!("{report}");
    relay.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
