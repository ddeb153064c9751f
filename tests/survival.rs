//! What the relay survives. Each test prints a summary line (`crash: …`, `outage: …`) that
//! RELIABILITY.md quotes; run with `cargo test --test survival -- --nocapture` to see them.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long a relay process may take to start listening here.
const START: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

/// Event ids each receiver got, with how many times.
fn delivered(receiver: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in receiver.requests().iter().filter(|r| r.status == 200) {
        if let Some(id) = r.header("x-hookrelay-event-id") {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    seen
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    common::spawn_serve(config, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let dir = tempdir();
    let a = Receiver::ok().await;
    let started = Instant::now();
    // b fails for a while, so retries are pending when the kills land.
    let b = Receiver::scripted(Arc::new(move |_, _| {
        let status = if started.elapsed() < Duration::from_millis(1500) {
            503
        } else {
            200
        };
        (status, vec![], String::new())
    }))
    .await;
    let port = free_port();
    let config = dir.path().join("relay.toml");
    let target = |name: &str, url: String| {
        format!("[[targets]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nretry = {{ initial_delay = \"100ms\", jitter = 0.0, max_retries = 100 }}\nprobe_interval = \"100ms\"\nbody = '{{{{event.title}}}}'\nheaders = {{ \"content-type\" = \"text/plain\" }}\n")
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[admin]\nenabled = false\n[store]\npath = \"{}\"\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n{}{}",
            dir.path().join("data").display(),
            target("a", a.url("/a")),
            target("b", b.url("/b")),
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(&config, &log);
    wait_listening(port, START).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..8u64 {
        let (stop, sent, acked) = (stop.clone(), sent.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                // One ordering key per sender (its monitor), numbered in sending order.
                let body = format!(
                    "{{\"type\":\"StatusChange\",\"recorded_at\":\"2025-01-01T00:00:00Z\",\"monitor\":{{\"id\":\"s{sender}\"}},\"status\":\"down\",\"message\":\"{sender}-{n}\"}}"
                );
                let resp = client.post(format!("http://127.0.0.1:{port}/sg")).header("content-type", "application/json").body(body).send().await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        acked.lock().unwrap().extend(v["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_owned()));
                    }
                    // Refused or cut off while the relay is down: not acknowledged, so the
                    // sender would retry; nothing to check.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }

    let kills = [350u64, 600, 450, 800];
    for pause in kills {
        // At least the pause, and at least 30 more acknowledgements (a loaded machine starts
        // the relay slowly), so every kill lands in a flow of requests.
        let before = acked.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(pause)).await;
        wait_until(Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= before + 30
        })
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn(&config, &log);
        wait_listening(port, START).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() > 100,
        "the load generator got only {} acknowledgements; relay log:\n{}",
        acked.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let complete = wait_until(Duration::from_secs(60), || {
        let (da, db) = (delivered(&a), delivered(&b));
        acked
            .iter()
            .all(|id| da.contains_key(id) && db.contains_key(id))
    })
    .await;
    let (da, db) = (delivered(&a), delivered(&b));
    let lost_a = acked.iter().filter(|id| !da.contains_key(*id)).count();
    let lost_b = acked.iter().filter(|id| !db.contains_key(*id)).count();
    let dup = |d: &HashMap<String, usize>| d.values().map(|n| n - 1).sum::<usize>();
    println!(
        "crash: {} kills (SIGKILL), sent {}, acknowledged {}, delivered to a {} and b {}, lost {}, duplicates a {} b {}",
        kills.len(),
        sent.load(Ordering::Relaxed),
        acked.len(),
        da.len(),
        db.len(),
        lost_a + lost_b,
        dup(&da),
        dup(&db)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Per-key order across the kills: each sender's numbers reach each receiver in
    // non-decreasing order (a delivery whose outcome a kill cut off is sent again, so a number
    // may repeat, but an older one never follows a newer one).
    for (name, receiver) in [("a", &a), ("b", &b)] {
        let mut last: HashMap<String, u64> = HashMap::new();
        for r in receiver.requests().iter().filter(|r| r.status == 200) {
            let text = r.text();
            let (sender, n) = text
                .split_once('-')
                .unwrap_or_else(|| panic!("{name}: a body not sender-n: {text:?} ({r:?})"));
            let n: u64 = n.parse().unwrap();
            let before = last.insert(sender.to_owned(), n).unwrap_or(0);
            assert!(
                n >= before,
                "{name}: sender {sender}'s {n} arrived after its {before}"
            );
        }
    }
    assert!(
        complete && lost_a + lost_b == 0,
        "lost: a {lost_a}, b {lost_b}; relay log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Nothing was delivered that the relay did not acknowledge (a request cut off mid-way may
    // have been stored without its answer arriving; those are extra, not lost).
    assert!(da.len() >= acked.len() && db.len() >= acked.len());
}

const SG: &str = "/com.statusgator/v1";

fn numbered(key: usize, n: usize) -> String {
    format!("{{\"type\":\"StatusChange\",\"recorded_at\":\"2025-01-01T00:00:00Z\",\"monitor\":{{\"id\":\"k{key}\"}},\"status\":\"down\",\"message\":\"k{key}-{n}\"}}")
}

#[tokio::test]
async fn a_target_down_for_a_while_drains_in_order_and_never_delays_another() {
    let dir = tempdir();
    let healthy = Receiver::ok().await;
    let port = free_port();
    let targets = format!(
        "\n[[targets]]\nname = \"down\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/x\"\nbody = '{{{{event.title}}}}'\nretry = {{ initial_delay = \"50ms\", max_delay = \"300ms\", jitter = 0.0, max_retries = 100 }}\nprobe_interval = \"100ms\"\n\n[[targets]]\nname = \"healthy\"\nkind = \"webhook\"\nurl = \"{}\"\nbody = '{{{{event.title}}}}'\n",
        healthy.url("/ok")
    );
    let relay = spawn_relay(&format!("{SOURCES}{targets}"), dir.path()).await;
    let (keys, per_key) = (6, 10);
    let mut sent_at = HashMap::new();
    for n in 0..per_key {
        for key in 0..keys {
            sent_at.insert(format!("k{key}-{n}"), Instant::now());
            let (status, _) =
                post(&url(&relay, SG), Some("application/json"), numbered(key, n)).await;
            assert_eq!(status, 200);
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let total = keys * per_key;
    let got = healthy.wait_for(total, Duration::from_secs(10)).await;
    let max_lag = got
        .iter()
        .map(|r| r.at.duration_since(sent_at[&r.text()]))
        .max()
        .unwrap();
    assert!(
        max_lag < Duration::from_secs(1),
        "the healthy target waited {max_lag:?}"
    );

    // The other target comes back.
    let back = Instant::now();
    let down = Receiver::scripted_on(
        Arc::new(|_, _| (200, vec![], "ok".into())),
        &format!("127.0.0.1:{port}"),
    )
    .await;
    let drained = down.wait_for(total, Duration::from_secs(20)).await;
    let drain_time = back.elapsed();
    let mut last: HashMap<String, usize> = HashMap::new();
    for r in &drained {
        let text = r.text();
        let (key, n) = text.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(prev) = last.insert(key.to_owned(), n) {
            assert!(n > prev, "{key}: {n} arrived after {prev}");
        }
    }
    let ids: HashSet<String> = drained.iter().map(|r| r.text()).collect();
    assert_eq!(ids.len(), total, "everything was delivered");
    println!(
        "outage: {total} events over {} keys while one target was down; healthy target max lag {} ms; \
         the other drained all {total} in per-key order {} ms after it came back",
        keys,
        max_lag.as_millis(),
        drain_time.as_millis()
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_target_taking_ten_seconds_slows_neither_ingest_nor_other_targets() {
    let dir = tempdir();
    let slow = Receiver::scripted(Arc::new(|_, _| {
        (
            200,
            vec![("x-test-delay-ms".into(), "10000".into())],
            "late".into(),
        )
    }))
    .await;
    let fast = Receiver::ok().await;
    let targets = format!(
        "\n[[targets]]\nname = \"slow\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"500ms\"\nretry = {{ initial_delay = \"100ms\", jitter = 0.0 }}\nsuspend_after = 0\n\n[[targets]]\nname = \"fast\"\nkind = \"webhook\"\nurl = \"{}\"\nbody = '{{{{event.title}}}}'\n",
        slow.url("/slow"),
        fast.url("/fast")
    );
    let relay = spawn_relay(&format!("{SOURCES}{targets}"), dir.path()).await;
    let mut ingest_max = Duration::ZERO;
    let mut sent_at = HashMap::new();
    for n in 0..20 {
        let t = Instant::now();
        sent_at.insert(format!("k{}-{n}", n % 5), t);
        let (status, _) = post(
            &url(&relay, SG),
            Some("application/json"),
            numbered(n % 5, n),
        )
        .await;
        ingest_max = ingest_max.max(t.elapsed());
        assert_eq!(status, 200);
    }
    let got = fast.wait_for(20, Duration::from_secs(5)).await;
    let fast_max = got
        .iter()
        .map(|r| r.at.duration_since(sent_at[&r.text()]))
        .max()
        .unwrap();
    assert!(
        ingest_max < Duration::from_millis(500),
        "ingest took {ingest_max:?}"
    );
    assert!(
        fast_max < Duration::from_secs(1),
        "the fast target waited {fast_max:?}"
    );
    // The slow one times out after 500 ms and is retried.
    let id = relay.target_id("slow").unwrap();
    assert!(
        wait_until_async(|| async { timeouts(&relay, id).await >= 3 }).await,
        "timeouts were not recorded and retried"
    );
    let timed_out = timeouts(&relay, id).await;
    println!(
        "slow: a target answering after 10 s; 20 events, ingest max {} ms, other target max lag {} ms, \
         {timed_out} attempts at the slow one timed out after 500 ms and were retried",
        ingest_max.as_millis(),
        fast_max.as_millis()
    );
    relay.shutdown().await.unwrap();
}

/// Attempts at `target` recorded as timed out, over the first 40 deliveries.
async fn timeouts(relay: &hookrelay::Relay, target: u32) -> usize {
    use hookrelay::store::Store;
    let mut n = 0;
    for seq in 1..=40 {
        if let Some(d) = relay.store().delivery(seq).await.unwrap() {
            if d.target == target {
                n += relay
                    .store()
                    .attempts(seq)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|a| a.error.as_deref() == Some("timed out"))
                    .count();
            }
        }
    }
    n
}

#[tokio::test]
async fn a_damaged_store_is_refused_with_a_way_out() {
    let dir = tempdir();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let outbox = format!(
        "\n[[targets]]\nname = \"outbox\"\nkind = \"file\"\npath = \"{}/outbox.jsonl\"\n",
        dir.path().display()
    );
    let relay = spawn_relay(&format!("{SOURCES}{outbox}"), &base).await;
    for n in 0..200 {
        let (status, _) = post(
            &url(&relay, SG),
            Some("application/json"),
            numbered(n % 7, n),
        )
        .await;
        assert_eq!(status, 200);
    }
    relay.shutdown().await.unwrap();

    let damages: [(&str, Damage); 4] = [
        ("truncated to a third", |db| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(db.join("db"))
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 3).unwrap();
        }),
        ("emptied", |db| std::fs::write(db.join("db"), b"").unwrap()),
        ("overwritten in the middle", |db| {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(db.join("db"))
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.seek(SeekFrom::Start(len / 4)).unwrap();
            f.write_all(&vec![0xA5; (len / 2) as usize]).unwrap();
        }),
        ("its config file removed", |db| {
            std::fs::remove_file(db.join("conf")).unwrap()
        }),
    ];
    let mut report = Vec::new();
    for (what, damage) in damages {
        let copy = dir.path().join(what.replace(' ', "-"));
        copy_dir(&base.join("data"), &copy.join("data"));
        damage(&copy.join("data"));
        let config = format!("{SOURCES}{outbox}").replace("{dir}", copy.to_str().unwrap());
        let parsed = hookrelay::Config::parse(&config, "test.toml", &copy).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = hookrelay::Relay::start(parsed, listener).await;
        let error = match started {
            // Opening is only right if nothing was lost.
            Ok(r) => {
                use hookrelay::store::Store;
                let events = r.store().stats().await.unwrap().events;
                r.shutdown().await.unwrap();
                assert_eq!(
                    events, 200,
                    "a store {what} was opened with {events} of its 200 events"
                );
                report.push(format!("{what}: opened with all 200 events"));
                continue;
            }
            Err(e) => e.to_string(),
        };
        assert!(error.contains("store"), "{what}: {error}");
        report.push(format!("{what}: refused"));
        if error.contains("accept-damage") {
            // The documented way out: accept what is left, then start.
            let config_path = copy.join("relay.toml");
            std::fs::write(&config_path, &config).unwrap();
            let out = Command::new(BIN)
                .args([
                    "store",
                    "accept-damage",
                    "--config",
                    config_path.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("accepted as it is"), "{said}");
            let parsed = hookrelay::Config::parse(&config, "test.toml", &copy).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let relay = hookrelay::Relay::start(parsed, listener)
                .await
                .expect("starts after accept-damage");
            relay.shutdown().await.unwrap();
            report.last_mut().unwrap().push_str(
                " as missing acknowledged data, then started after `store accept-damage`",
            );
        }
    }
    println!("corruption: {}", report.join("; "));
}

/// A way to damage a store directory.
type Damage = fn(&std::path::Path);

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, megabytes: u32) -> Result<SmallDisk, String> {
        if is_root() {
            std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
            let out = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={megabytes}m"),
                    "tmpfs",
                    at.to_str().unwrap(),
                ])
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if out.status.success() {
                return Ok(SmallDisk(at.to_path_buf()));
            }
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err("not running as root, so no small filesystem can be mounted".into())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn a_full_disk_answers_503_loses_nothing_and_recovers() {
    let dir = tempdir();
    let fs = dir.path().join("small");
    // Needs root to mount a tmpfs (CI runs as root); fails with the reason otherwise.
    let disk = SmallDisk::mount(&fs, 16).unwrap_or_else(|why| panic!("disk-full: {why}"));
    let ballast = fs.join("ballast");
    std::fs::write(&ballast, vec![0u8; 6 << 20]).unwrap();
    let receiver = Receiver::ok().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[store]\npath = \"{}\"\nmin_free_bytes = 3145728\nprune_interval = \"100ms\"\nwrite_timeout = \"2s\"\n[[sources]]\nname = \"sg\"\nkind = \"statusgator\"\npath = \"/sg\"\n[[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        fs.join("data").display(),
        receiver.url("/in")
    );
    let relay = spawn_relay(&config, dir.path()).await;
    // Small enough that what is written between two free-space checks (every 100 ms) stays
    // well inside the 3 MB reserve, so the check, not the disk itself, refuses first.
    let pad = "x".repeat(2_000);
    let mut acked = HashSet::new();
    let mut refused = HashMap::new();
    let mut slowest = Duration::ZERO;
    for n in 0..3000 {
        let body = format!("{{\"type\":\"StatusChange\",\"monitor\":{{\"id\":\"m{}\"}},\"status\":\"down\",\"message\":\"{n}\",\"details\":\"{pad}\"}}", n % 10);
        let t = Instant::now();
        let (status, answer) = tokio::time::timeout(
            Duration::from_secs(10),
            post(&url(&relay, "/sg"), Some("application/json"), body),
        )
        .await
        .expect("the relay answers even when its disk is full");
        slowest = slowest.max(t.elapsed());
        if status == 200 {
            acked.extend(
                answer["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_owned()),
            );
        } else {
            assert_eq!(status, 503, "{answer}");
            *refused
                .entry(answer["code"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
            if refused.values().sum::<usize>() >= 5 {
                break;
            }
        }
    }
    assert!(
        refused.contains_key("disk_full"),
        "the disk never filled: {refused:?}"
    );
    let filled_at = acked.len();

    // Space is freed: ingest accepts again by itself.
    std::fs::remove_file(&ballast).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        let (status, answer) = post(
            &url(&relay, "/sg"),
            Some("application/json"),
            "{\"type\":\"StatusChange\",\"monitor\":{\"id\":\"after\"},\"status\":\"up\"}"
                .to_owned(),
        )
        .await;
        if status == 200 {
            acked.extend(
                answer["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_owned()),
            );
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "ingest did not recover after space was freed");
    let all = wait_until(Duration::from_secs(20), || {
        let d = delivered(&receiver);
        acked.iter().all(|id| d.contains_key(id))
    })
    .await;
    let d = delivered(&receiver);
    let lost = acked.iter().filter(|id| !d.contains_key(*id)).count();
    println!(
        "disk-full: 16 MB filesystem; {filled_at} events acknowledged before it filled, then 503 {refused:?}; \
         slowest answer {} ms; accepted again after space was freed; lost {lost} of {}",
        slowest.as_millis(),
        acked.len()
    );
    assert!(all && lost == 0);
    let _ = tokio::time::timeout(Duration::from_secs(5), relay.shutdown()).await;
    drop(disk);
}
