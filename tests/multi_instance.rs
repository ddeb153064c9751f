//! Several relay processes on one PostgreSQL database: the scale-out setup. Each test makes
//! its own database on the test server (`common::test_database_url`: the one
//! `HOOKRELAY_TEST_DATABASE_URL` names, else the one `.ci/postgres` starts) and fails with the
//! reason when there is none. Run with `-- --nocapture` to see the summary lines.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long a relay process may take to start listening here.
const START: Duration = Duration::from_secs(20);
use hookrelay::store::{AnyStore, Claim, PgOptions, PgStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

struct Instance {
    port: u16,
    child: Child,
}

/// A failed assertion must not leave relays running.
impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, name: &str, db: &str, sink: &Receiver) -> Instance {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "1s"
[admin]
enabled = false
[store]
backend = "postgres"
url_env = "HOOKRELAY_TEST_DB"
instance = "{name}"
lease = "4s"
pool_size = 8
[delivery]
user_agent = "{name}"
connect_timeout = "1s"
timeout = "2s"
[[sources]]
name = "sg"
kind = "statusgator"
path = "/sg"
[[targets]]
name = "sink"
kind = "webhook"
url = "{url}"
concurrency = 4
retry = {{ initial_delay = "100ms", jitter = 0.0, max_retries = 100 }}
"#,
            url = sink.url("/hook"),
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("HOOKRELAY_TEST_DB", db)
        .env("HOOKRELAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Instance { port, child }
}

fn body(key: usize, n: usize) -> String {
    format!(
        "{{\"type\":\"StatusChange\",\"recorded_at\":\"2025-01-01T00:00:00Z\",\"monitor\":{{\"id\":\"key{key}\"}},\"status\":\"down\",\"message\":\"{}\"}}",
        token(key, n)
    )
}

/// What identifies an event at the sink, whichever instance stored it.
fn token(key: usize, n: usize) -> String {
    format!("tok-{key}-{n}-end")
}

/// The token in a delivered body.
fn token_in(text: &str) -> Option<String> {
    let start = text.find("tok-")?;
    let len = text[start..].find("-end")?;
    Some(text[start..start + len + 4].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_lose_nothing_and_keep_order() {
    let db = fresh_database().await;
    let dir = tempdir();
    // Each answer takes 20 ms, so a delivery sent by two instances at once would show as
    // two arrivals closer together than that.
    let sink = Receiver::scripted(Arc::new(|_, _| {
        (
            200,
            vec![("x-test-delay-ms".into(), "20".into())],
            "ok".into(),
        )
    }))
    .await;
    let mut instances: Vec<Instance> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| start(dir.path(), n, &db, &sink))
        .collect();
    for i in &instances {
        wait_listening(i.port, START).await;
    }
    let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // 12 keys, 40 events each, sent in order per key (the next after the previous is
    // acknowledged), spread round robin over the instances like a load balancer would; a
    // refused or cut-off request goes to the next instance, as a sender's retry would.
    const KEYS: usize = 12;
    const PER_KEY: usize = 40;
    let acked: Arc<Mutex<HashMap<usize, Vec<String>>>> = Arc::default();
    let acked_by: Arc<Mutex<[usize; 3]>> = Arc::default();
    let mut senders = Vec::new();
    for key in 0..KEYS {
        let (acked, acked_by, ports) = (acked.clone(), acked_by.clone(), ports.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut turn = key;
            for n in 0..PER_KEY {
                loop {
                    turn += 1;
                    let i = turn % ports.len();
                    let resp = client
                        .post(format!("http://127.0.0.1:{}/sg", ports[i]))
                        .header("content-type", "application/json")
                        .body(body(key, n))
                        .send()
                        .await;
                    if let Ok(r) = resp {
                        // A 200 may also say "duplicate": an earlier try was stored by an
                        // instance killed before it could answer. Acknowledged either way.
                        if r.status() == 200 {
                            acked
                                .lock()
                                .unwrap()
                                .entry(key)
                                .or_default()
                                .push(token(key, n));
                            acked_by.lock().unwrap()[i] += 1;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Kill the second instance once about a third of the events are in.
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || {
            acked.lock().unwrap().values().map(Vec::len).sum::<usize>() >= KEYS * PER_KEY / 3
        })
        .await
    );
    instances[1].child.kill().unwrap(); // SIGKILL
    instances[1].child.wait().unwrap();
    killed.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed_at = started.elapsed();
    for s in senders {
        s.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(total, KEYS * PER_KEY);
    // Deliveries the killed instance held are due again once its leases (4 s) expire.
    let all: HashSet<String> = acked.values().flatten().cloned().collect();
    let delivered_tokens = |requests: &[Recorded]| -> HashSet<String> {
        requests
            .iter()
            .filter_map(|r| token_in(&r.text()))
            .collect()
    };
    let complete = wait_until(Duration::from_secs(60), || {
        all.is_subset(&delivered_tokens(&sink.requests()))
    })
    .await;
    let requests = sink.requests();
    let seen = delivered_tokens(&requests);
    let lost = all.iter().filter(|t| !seen.contains(*t)).count();
    assert!(complete, "{lost} acknowledged events never delivered");

    // Per key, events reach the sink in the order they were acknowledged (first arrivals;
    // a redelivery after the kill may repeat one, at least once means that).
    let mut order: HashMap<usize, Vec<String>> = HashMap::new();
    let mut first: HashSet<String> = HashSet::new();
    for r in &requests {
        let t = token_in(&r.text()).expect("every body carries its token");
        if first.insert(t.clone()) {
            let key: usize = t.split('-').nth(1).unwrap().parse().unwrap();
            order.entry(key).or_default().push(t);
        }
    }
    assert_eq!(order, acked, "per-key order");

    // No delivery was ever in flight from two instances at once.
    let mut arrivals: HashMap<&str, Vec<Instant>> = HashMap::new();
    for r in &requests {
        arrivals
            .entry(r.header("x-hookrelay-delivery-id").unwrap())
            .or_default()
            .push(r.at);
    }
    let duplicates: usize = arrivals.values().map(|a| a.len() - 1).sum();
    for (id, mut at) in arrivals {
        at.sort();
        for w in at.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(20),
                "delivery {id} was in flight twice at once"
            );
        }
    }

    // The work was shared: every instance took requests and sent deliveries.
    let by_agent = |name: &str| {
        requests
            .iter()
            .filter(|r| r.header("user-agent") == Some(name))
            .count()
    };
    let sent_by = [by_agent("r1"), by_agent("r2"), by_agent("r3")];
    let acked_by = *acked_by.lock().unwrap();
    assert!(acked_by.iter().all(|&n| n > 0), "acked by {acked_by:?}");
    assert!(sent_by.iter().all(|&n| n > 0), "sent by {sent_by:?}");
    println!(
        "multi-instance: 3 relays, r2 SIGKILLed at {:.1} s; acknowledged {total} (by r1/r2/r3: {acked_by:?}), \
         delivered all {} (sent by r1/r2/r3: {sent_by:?}), lost {lost}, duplicates {duplicates}, per-key order held",
        killed_at.as_secs_f64(),
        all.len(),
    );
    drop(instances);
}

/// Two stores on one database, as two instances see it: a claim is held by one at a time,
/// an expired lease passes the delivery on, and the instance that lost it cannot record over
/// the one that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_pass_between_instances_only_when_they_expire() {
    let db = fresh_database().await;
    let open = |name: &str, lease_ms: u64| {
        let db = db.clone();
        let name = name.to_owned();
        async move {
            AnyStore::Postgres(
                PgStore::open(&PgOptions {
                    url: db,
                    pool_size: 4,
                    lease: Duration::from_millis(lease_ms),
                    instance: name,
                })
                .await
                .unwrap(),
            )
        }
    };
    let a = open("a", 300).await;
    let b = open("b", 60_000).await;
    let t = a.target_ids(&["t".into()]).await.unwrap()[0];
    assert_eq!(b.target_ids(&["t".into()]).await.unwrap(), [t]);
    let e = hookrelay::normalize::normalize(&hookrelay::normalize::Received {
        source: "sg",
        kind: hookrelay::normalize::SourceKind::Statusgator,
        content_type: Some("application/json"),
        body: body(1, 1).into(),
        query: Default::default(),
        received_at: chrono::Utc::now(),
        webhook_id: None,
    })
    .unwrap()
    .pop()
    .unwrap();
    let now = hookrelay::deliver::now_ms();
    let batch = hookrelay::store::IngestBatch {
        events: vec![hookrelay::store::NewEvent::new(
            &e,
            vec![hookrelay::store::NewDelivery {
                target: t,
                ordering_key: "k".into(),
            }],
        )
        .unwrap()],
        now_ms: now,
        dedup_until_ms: now + 60_000,
    };
    b.ingest(batch).await.unwrap();

    let Claim::Due(held) = a.claim(t, now).await.unwrap() else {
        panic!("a claims the new delivery")
    };
    match b.claim(t, now).await.unwrap() {
        // b cannot take what a holds, but learns when a's lease runs out.
        Claim::Wait(until) => assert!(until > now && until <= hookrelay::deliver::now_ms() + 300),
        other => panic!("b must wait for a's lease: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let Claim::Due(taken) = b.claim(t, hookrelay::deliver::now_ms()).await.unwrap() else {
        panic!("a's lease expired: b takes the delivery")
    };
    assert_eq!(taken.seq, held.seq);
    let attempt = |n| hookrelay::store::Attempt {
        number: n,
        at_ms: now,
        latency_ms: 1,
        status: Some(200),
        error: None,
        response_excerpt: None,
    };
    // a comes back late: its finish is ignored; b's counts.
    a.finish(&held, attempt(1), hookrelay::store::Next::Dead)
        .await
        .unwrap();
    assert!(b.dead_letters(t).await.unwrap().is_empty());
    b.finish(&taken, attempt(1), hookrelay::store::Next::Done)
        .await
        .unwrap();
    let d = a.delivery(held.seq).await.unwrap().unwrap();
    assert_eq!(d.state, hookrelay::store::DeliveryState::Done);
    assert_eq!(a.attempts(held.seq).await.unwrap().len(), 1);
}

/// Two relays in one process on one database: pausing a target through one instance's admin
/// API stops the other instance too; resuming starts both, and the paused work goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_one_instance_holds_them_all() {
    let db = fresh_database().await;
    let dir = tempdir();
    let sink = Receiver::ok().await;
    let config = |name: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"postgres\"\nurl = \"{db}\"\ninstance = \"{name}\"\n\
             [[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n\
             [[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            sink.url("/hook")
        )
    };
    let one = spawn_relay(&config("one"), dir.path()).await;
    let two = spawn_relay(&config("two"), dir.path()).await;
    let paused = client()
        .post(format!(
            "http://{}/targets/hook/pause",
            one.admin_addr().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let status_of = |relay: &hookrelay::Relay| {
        let url = format!("http://{}/targets", relay.admin_addr().unwrap());
        async move {
            let v: serde_json::Value = client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["targets"][0]["state"].as_str().unwrap().to_owned()
        }
    };
    assert!(
        wait_until_async(|| async { status_of(&two).await == "paused" }).await,
        "the other instance follows the pause"
    );
    let mut ids = Vec::new();
    for n in 0..5 {
        let (status, v) = post(&url(&two, "/sg"), Some("application/json"), body(1, n)).await;
        assert_eq!(status, 200);
        ids.push(v["events"][0].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.count(),
        0,
        "a paused target sends nothing from any instance"
    );

    let resumed = client()
        .post(format!(
            "http://{}/targets/hook/resume",
            one.admin_addr().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 5).await);
    let delivered: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| r.header("x-hookrelay-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ids, "all five, in order");
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}
