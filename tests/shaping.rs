//! Traffic shaping for status pages, as users meet it: a real relay on port 0, a real store,
//! real local receivers, real time (short windows; no sleep longer than a few seconds).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hookrelay::store::{DeliveryState, Store};
use hookrelay::Relay;
use serde_json::{json, Value};

const SG: &str = "/com.statusgator/v1";

/// A webhook target whose body says which entity, which state and which message.
fn target(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[targets]]
name = "{name}"
kind = "webhook"
url = "{url}"
body = '{{"e": "{{{{alert.entity_id}}}}", "s": "{{{{alert.entity_state}}}}", "m": "{{{{event.title}}}}", "flapped": {{{{delivery.flapped}}}}, "superseded": {{{{delivery.superseded}}}}}}'
{extra}
"#
    )
}

/// A StatusGator v3 alert: monitor `entity` went `status` (`down` is CRITICAL, `up` OK).
fn alert(entity: &str, status: &str, message: &str) -> String {
    json!({
        "type": "StatusChange",
        "recorded_at": "2025-07-17T02:20:45Z",
        "monitor": {"id": entity, "type": "WebsiteMonitor", "display_name": entity},
        "status": status,
        "previous_status": "up",
        "message": message,
    })
    .to_string()
}

/// Posts alerts one after another, each acknowledged before the next; their event ids.
async fn send(relay: &Relay, alerts: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for body in alerts {
        let (status, answer) = post(&url(relay, SG), Some("application/json"), body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["events"][0].as_str().unwrap().to_owned());
    }
    ids
}

async fn admin(relay: &Relay, path: &str) -> Value {
    let url = format!("http://{}{path}", relay.admin_addr().unwrap());
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Waits until no delivery is pending.
async fn settle(relay: &Relay, within: Duration) {
    let deadline = Instant::now() + within;
    while relay.store().stats().await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "deliveries did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a receiver got: (entity, state, message, flapped) of each request answered 2xx.
fn got(r: &Receiver) -> Vec<(String, String, String, bool)> {
    r.requests()
        .iter()
        .filter(|q| q.status < 300)
        .map(|q| {
            let b = q.json();
            (
                b["e"].as_str().unwrap().to_owned(),
                b["s"].as_str().unwrap().to_owned(),
                b["m"].as_str().unwrap().to_owned(),
                b["flapped"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A receiver that enforces `per_second` requests a second as a token bucket holding as
/// many (the way rate-limited APIs such as StatusHub's count), answering 429 with
/// `Retry-After: 1` beyond it.
async fn limited(per_second: f64) -> Receiver {
    let bucket = Arc::new(Mutex::new((per_second, Instant::now())));
    Receiver::scripted(Arc::new(move |_, _| {
        let mut b = bucket.lock().unwrap();
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * per_second).min(per_second);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            (200, vec![], "ok".into())
        } else {
            (
                429,
                vec![("retry-after".into(), "1".into())],
                r#"{"error":"Too many requests - please retry later"}"#.into(),
            )
        }
    }))
    .await
}

/// Guards the rate limit (`Store::rate_take` before each send, shared by the target's four
/// lanes): without it the receiver answers 429 within the first second. 200 alerts over 40
/// entities arrive at once and are delivered at StatusHub's documented 5/s, every one, with
/// no 429, each entity's in the order they came. Takes about 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_rate_limited_receiver_without_a_429_in_per_entity_order() {
    let dir = tempdir();
    let hub = limited(5.0).await;
    let config = format!(
        "{SOURCES}{}",
        target(
            "hub",
            &hub.url("/hook"),
            "rate_limit = \"5/s\"\nconcurrency = 4"
        )
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let alerts: Vec<String> = (0..200)
        .map(|i| alert(&format!("e{}", i % 40), "down", &format!("{i:03}")))
        .collect();
    send(&relay, &alerts).await;
    settle(&relay, Duration::from_secs(60)).await;
    let requests = hub.requests();
    assert!(requests.iter().all(|r| r.status == 200), "a 429 was earned");
    let got = got(&hub);
    assert_eq!(got.len(), 200);
    let mut last: HashMap<String, String> = HashMap::new();
    for (e, _, m, _) in &got {
        if let Some(before) = last.insert(e.clone(), m.clone()) {
            assert!(before < *m, "{e}: {m} after {before}");
        }
    }
    assert_eq!(last.len(), 40);
    let took = requests.last().unwrap().at - requests[0].at;
    assert!(took >= Duration::from_millis(199 * 200 - 500), "{took:?}");
    relay.shutdown().await.unwrap();
}

/// Guards latest-state coalescing (`Store::finish_shaped` superseding the backlog, and the
/// probe of a suspended target shaped like a lane's step): without it the target gets all 31
/// alerts when it returns. A target is down while 30 flips of one entity and 1 alert of
/// another arrive; when it is back it gets exactly one request per entity, each the latest
/// state, and the event log shows the other 29 as superseded by that one. Also guards the
/// superseded deliveries' letting go of their events in the delivery cache (without it the
/// cache still held 28 of them after the last request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_each_entity_gets_one_request_with_its_latest_state() {
    let dir = tempdir();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = format!(
        "{SOURCES}{}",
        target(
            "page",
            &url,
            "coalesce = \"latest\"\nsuspend_after = 2\nprobe_interval = \"300ms\"\n\
             retry = { initial_delay = \"100ms\", jitter = 0.0 }"
        )
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let flips: Vec<String> = (0..30)
        .map(|i| {
            alert(
                "flappy",
                if i % 2 == 0 { "down" } else { "up" },
                &format!("flip {i:02}"),
            )
        })
        .chain([alert("steady", "down", "once")])
        .collect();
    let ids = send(&relay, &flips).await;
    // Down a while: attempts fail, the target suspends.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let hub = Receiver::scripted_on(
        Arc::new(|_, _| (200, vec![], "ok".into())),
        &format!("127.0.0.1:{port}"),
    )
    .await;
    settle(&relay, Duration::from_secs(20)).await;
    let mut got = got(&hub);
    got.sort();
    assert_eq!(
        got,
        [
            ("flappy".into(), "OK".into(), "flip 29".into(), false),
            ("steady".into(), "CRITICAL".into(), "once".into(), false),
        ],
        "one request per entity, the latest state"
    );
    let last = admin(&relay, &format!("/events/{}", ids[29])).await;
    let kept = last["deliveries"][0]["id"].as_u64().unwrap();
    assert_eq!(last["deliveries"][0]["state"], "done");
    // Each older delivery is superseded by a later one of its key: the kept one, or one that
    // an attempt made while the target was still down coalesced them into and that was then
    // itself superseded. Following the notes from any of them ends at the kept delivery.
    let mut by: HashMap<u64, u64> = HashMap::new();
    for id in &ids[..29] {
        let e = admin(&relay, &format!("/events/{id}")).await;
        let d = &e["deliveries"][0];
        assert_eq!(d["state"], "superseded", "{id}");
        let note = d["note"].as_str().unwrap_or_default();
        let later: u64 = note
            .strip_prefix("superseded by delivery #")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{id}: note {note:?}"));
        let own = d["id"].as_u64().unwrap();
        assert!(later > own && later <= kept, "{own} superseded by {later}");
        by.insert(own, later);
    }
    for start in by.keys() {
        let mut at = *start;
        while let Some(next) = by.get(&at) {
            at = *next;
        }
        assert_eq!(at, kept, "the chain from {start} ends at {at}");
    }
    let stats = relay.store().stats().await.unwrap();
    assert_eq!((stats.superseded, stats.done), (29, 2));
    let metrics = client()
        .get(format!("http://{}/metrics", relay.admin_addr().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hookrelay_deliveries_superseded_total{target=\"page\"} 29"),
        "{metrics}"
    );
    // Each superseded delivery let go of its event in the delivery cache: none is left
    // waiting there for a delivery that will never be attempted.
    let cached = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookrelay_event_cache_events "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(cached, 0, "events left in the cache");
    relay.shutdown().await.unwrap();
}

/// Guards flap suppression (`deliver::flap`): without it every flip is sent. An entity that
/// changes state more than 3 times within 2 s is held until it has been stable for 2 s, then
/// gets the state it settled on, once, marked as having flapped; the flips in between are
/// superseded. Another entity is not held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_entity_is_held_until_stable_then_gets_the_state_it_settled_on() {
    let dir = tempdir();
    let hub = Receiver::ok().await;
    let config = format!(
        "{SOURCES}{}",
        target(
            "page",
            &hub.url("/hook"),
            "flap = { changes = 3, within = \"2s\" }"
        )
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let states = ["up", "down", "up", "down", "up", "down", "up", "down"];
    let alerts: Vec<String> = states
        .iter()
        .enumerate()
        .map(|(i, s)| alert("flappy", s, &format!("flip {i}")))
        .collect();
    let sent = Instant::now();
    send(&relay, &alerts).await;
    let last_flip = Instant::now();
    send(&relay, &[alert("calm", "down", "calm")]).await;
    // The first three changes go out as they come; then the entity flaps and is held.
    let flappy = |hub: &Receiver| -> Vec<String> {
        got(hub)
            .into_iter()
            .filter(|g| g.0 == "flappy")
            .map(|g| g.2)
            .collect()
    };
    assert!(wait_until(Duration::from_secs(2), || flappy(&hub).len() >= 4).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        flappy(&hub),
        ["flip 0", "flip 1", "flip 2", "flip 3"],
        "held after that"
    );
    assert!(
        got(&hub).iter().any(|g| g.0 == "calm"),
        "another entity is not held"
    );
    settle(&relay, Duration::from_secs(10)).await;
    let all: Vec<_> = got(&hub).into_iter().filter(|g| g.0 == "flappy").collect();
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(
        all[4],
        ("flappy".into(), "CRITICAL".into(), "flip 7".into(), true),
        "the state it settled on, marked as a flap"
    );
    let settled = hub.requests().last().unwrap().at;
    assert!(
        settled >= last_flip + Duration::from_millis(1900),
        "sent before it was stable"
    );
    assert!(settled < sent + Duration::from_secs(8));
    let stats = relay.store().stats().await.unwrap();
    assert_eq!(stats.superseded, 3, "flips 4 to 6");
    relay.shutdown().await.unwrap();
}

/// Guards maintenance windows (`deliver::window`, the hold in `deliver::shaping`): without
/// them alerts go out during the window. While a window is open the matching entity's alerts
/// are held (visible in the admin API), another entity's go out, a second target's window
/// skips them; when it ends the held entity gets its current state once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_holds_then_sends_the_current_state() {
    let dir = tempdir();
    let hub = Receiver::ok().await;
    let quiet = Receiver::ok().await;
    let now = chrono::Utc::now();
    let ends = Instant::now() + Duration::from_secs(3);
    let start = (now - chrono::Duration::seconds(1)).to_rfc3339();
    let end = (now + chrono::Duration::seconds(3)).to_rfc3339();
    let window = |action: &str| {
        format!(
            "\n[[targets.maintenance]]\nname = \"db-upgrade\"\nstart = \"{start}\"\nend = \"{end}\"\n\
             timezone = \"Europe/Berlin\"\naction = \"{action}\"\n\
             filter = [{{ field = \"entity_id\", wildcard = \"db*\" }}]\n"
        )
    };
    let config = format!(
        "{SOURCES}{}{}{}{}",
        target("page", &hub.url("/hook"), ""),
        window("hold"),
        target("chat", &quiet.url("/hook"), ""),
        window("skip"),
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let ids = send(
        &relay,
        &[
            alert("db1", "down", "db 1"),
            alert("db1", "up", "db 2"),
            alert("db1", "down", "db 3"),
            alert("web", "down", "web"),
        ],
    )
    .await;
    assert!(wait_until(Duration::from_secs(2), || got(&hub).len() == 1).await);
    assert_eq!(got(&hub)[0].0, "web");
    let targets = admin(&relay, "/targets").await;
    let page = &targets["targets"][0];
    assert_eq!(page["name"], "page");
    let w = &page["shaping"]["maintenance"][0];
    assert_eq!(
        (w["name"].as_str(), w["action"].as_str()),
        (Some("db-upgrade"), Some("hold"))
    );
    assert!(w["active_until"].is_string(), "{w}");
    let held = admin(&relay, &format!("/events/{}", ids[0])).await;
    let d = &held["deliveries"][0];
    assert_eq!(d["state"], "pending");
    assert!(
        d["note"]
            .as_str()
            .unwrap()
            .starts_with("held: maintenance window \"db-upgrade\""),
        "{d}"
    );

    settle(&relay, Duration::from_secs(8)).await;
    let got = got(&hub);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str(), got[1].2.as_str()),
        ("db1", "CRITICAL", "db 3")
    );
    assert!(
        hub.requests()[1].at + Duration::from_millis(100) >= ends,
        "sent during the window"
    );
    let stats = relay.store().stats().await.unwrap();
    assert_eq!(stats.superseded, 2, "db 1 and db 2 on the holding target");
    // The skipping target sent only `web`, and recorded the others as skipped.
    assert_eq!(quiet.requests().len(), 1);
    let chat = relay.target_id("chat").unwrap();
    let skipped = relay
        .store()
        .deliveries_of(ids[2].parse().unwrap())
        .await
        .unwrap();
    let s = skipped.iter().find(|d| d.target == chat).unwrap();
    assert_eq!(s.state, DeliveryState::Skipped);
    assert!(s
        .last_error
        .as_deref()
        .unwrap()
        .contains("maintenance window"));
    relay.shutdown().await.unwrap();
}

/// Guards the 429 handling (`Next::Throttled`, `Worker::throttle`): with a 429 counted as a
/// failure, the target (`suspend_after = 1`) would be suspended and the delivery (no
/// retries left) dead. A 429 with `Retry-After: 1` pauses the whole target for a second,
/// other entities too, then everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_whole_target_without_spending_retries_or_suspending_it() {
    let dir = tempdir();
    let hub = Receiver::scripted(Arc::new(|_, n| {
        if n == 0 {
            (
                429,
                vec![("retry-after".into(), "1".into())],
                "slow down".into(),
            )
        } else {
            (200, vec![], "ok".into())
        }
    }))
    .await;
    let config = format!(
        "{SOURCES}{}",
        target(
            "page",
            &hub.url("/hook"),
            "suspend_after = 1\nconcurrency = 1\nretry = { max_retries = 0 }"
        )
    );
    let relay = spawn_relay(&config, dir.path()).await;
    send(&relay, &[alert("a", "down", "first")]).await;
    assert!(wait_until(Duration::from_secs(2), || hub.count() == 1).await);
    send(&relay, &[alert("b", "down", "second")]).await;
    settle(&relay, Duration::from_secs(5)).await;
    let requests = hub.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests[1..] {
        assert!(
            r.at - requests[0].at >= Duration::from_millis(990),
            "sent during the pause"
        );
    }
    let stats = relay.store().stats().await.unwrap();
    assert_eq!((stats.done, stats.dead), (2, 0));
    let t = &admin(&relay, "/targets").await["targets"][0];
    assert_eq!(t["state"], "active");
    assert_eq!(t["shaping"]["rate_limited"], 1);
    relay.shutdown().await.unwrap();
}

/// A PagerDuty V3 event of `event_type` for incident `incident` on a service a rule gives a
/// StatusHub key.
fn pd(incident: &str, n: usize, event_type: &str) -> String {
    let mut v: Value =
        serde_json::from_slice(&fixture("pagerduty-v3-incident-triggered.json")).unwrap();
    v["event"]["id"] = json!(format!("{incident}-{n}"));
    v["event"]["event_type"] = json!(event_type);
    v["event"]["data"]["id"] = json!(incident);
    v["event"]["data"]["service"]["summary"] = json!("cloudwatch-db");
    v.to_string()
}

/// Guards the incident fold of coalescing (`deliver::incident::decide`): with the newest
/// alert decided alone, or the folded incident not kept (`unsent`) when the coalesced request
/// fails, the acknowledgement of an incident StatusHub never heard of does not fire and the
/// status page never shows it (both seen failing). A `statushub` target (coalescing and 5/s by
/// default) is down while one entity is triggered and acknowledged and another triggered and
/// resolved: when it is back it gets one request, the first entity's acknowledged incident,
/// and nothing for the second (it is over); the first's later recovery resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statushub_after_an_outage_shows_each_incident_where_it_is() {
    let dir = tempdir();
    let port = free_port();
    let config = format!(
        r#"{SOURCES}
[[targets]]
name = "hub"
kind = "statushub"
url = "http://127.0.0.1:{port}/hooks/victor_ops?token=${{{{ALERT.StatusHubfield}}}}"
suspend_after = 2
probe_interval = "300ms"
retry = {{ initial_delay = "100ms", jitter = 0.0 }}

[[rules]]
name = "key"
field = "service_name"
wildcard = "cloudwatch-*"
set = {{ StatusHubfield = "9cc47ae1670bf9c1" }}
"#
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let pd_path = "/com.pagerduty/v1";
    for body in [
        pd("P1", 1, "incident.triggered"),
        pd("P1", 2, "incident.acknowledged"),
        pd("P2", 3, "incident.triggered"),
        pd("P2", 4, "incident.resolved"),
    ] {
        let (status, answer) = post(&url(&relay, pd_path), Some("application/json"), body).await;
        assert_eq!(status, 202, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let hub = Receiver::scripted_on(
        Arc::new(|_, _| (200, vec![], "ok".into())),
        &format!("127.0.0.1:{port}"),
    )
    .await;
    settle(&relay, Duration::from_secs(20)).await;
    let phase = |r: &Recorded| {
        let b = r.json();
        (
            b["ALERT.entity_id"].as_str().unwrap().to_owned(),
            b["ALERT.message_type"].as_str().unwrap().to_owned(),
            b["STATE.CURRENT_ALERT_PHASE"].as_str().unwrap().to_owned(),
        )
    };
    let got: Vec<_> = hub.requests().iter().map(phase).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].1.as_str(), got[0].2.as_str()),
        ("ACKNOWLEDGEMENT", "ACKED")
    );
    let p1 = got[0].0.clone();
    post(
        &url(&relay, pd_path),
        Some("application/json"),
        pd("P1", 5, "incident.resolved"),
    )
    .await;
    settle(&relay, Duration::from_secs(5)).await;
    let got: Vec<_> = hub.requests().iter().map(phase).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1], (p1, "RECOVERY".into(), "RESOLVED".into()));
    relay.shutdown().await.unwrap();
}
