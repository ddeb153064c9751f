//! Delivery end to end: rendered requests, retries on a shortened schedule, dead letters,
//! restarts in the middle of a schedule, and per-key ordering with real local receivers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hookrelay::store::{DeliveryState, Store};
use serde_json::json;

const SG: &str = "/com.statusgator/v1";
const PD: &str = "/com.pagerduty/v1";

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[targets]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\n{extra}\n")
}

/// A StatusGator v3 body for monitor `monitor` with a distinguishing message.
fn sg_v3(monitor: &str, status: &str, message: &str) -> String {
    json!({
        "type": "StatusChange",
        "recorded_at": "2025-07-17T02:20:45Z",
        "monitor": {"id": monitor, "type": "WebsiteMonitor", "display_name": monitor},
        "status": status,
        "previous_status": "up",
        "message": message,
    })
    .to_string()
}

#[tokio::test]
async fn request_is_rendered_from_templates_byte_for_byte() {
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let target = webhook(
        "chat",
        &receiver.url("/hooks/{{event.source}}/{{alert.entity_display_name}}?aid={{query.aid}}"),
        r#"method = "PUT"
headers = { "Content-Type" = "application/json", "X-Event" = "{{event.id}}", "X-Kind" = "{{event.kind}}" }
body = '{"text": "{{alert.entity_display_name}}: {{alert.state_message}}", "svc": {{json event.service.name}}, "n": {{payload.data.incident.incident_number}}}'
"#,
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    let (status, body) = post(
        &url(&relay, &format!("{PD}?aid=a%26b")),
        Some("application/json"),
        fixture("pagerduty-v1-trigger.json"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["events"][0].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let r = &got[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(
        r.uri,
        "/hooks/pagerduty/CPU%20Load%20High%20on%20xdb_production_echo?aid=a%26b"
    );
    assert_eq!(
        r.text(),
        r#"{"text": "CPU Load High on xdb_production_echo: CPU Load High on xdb_production_echo", "svc": "Production XDB Cluster", "n": 2126}"#
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-event"), Some(event_id.as_str()));
    assert_eq!(r.header("x-kind"), Some("pagerduty"));
    assert_eq!(r.header("x-hookrelay-event-id"), Some(event_id.as_str()));
    assert_eq!(r.header("x-hookrelay-delivery-id"), Some("1"));
    assert!(r.header("user-agent").unwrap().starts_with("hookrelay/"));

    // The same template on a StatusGator event lacks `payload.data`: strict mode
    // makes that a dead letter naming the field, not a request with a hole in it.
    let (status, _) = post(
        &url(&relay, &format!("{SG}?aid=x")),
        Some("application/json"),
        fixture("statusgator-v2.json"),
    )
    .await;
    assert_eq!(status, 200);
    let id = relay.target_id("chat").unwrap();
    assert!(
        wait_until_async(|| async { !relay.store().dead_letters(id).await.unwrap().is_empty() })
            .await
    );
    let dead = relay.store().dead_letters(id).await.unwrap();
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(
        error.starts_with("body template: ") && error.contains("payload.data"),
        "{error}"
    );
    assert_eq!((dead[0].attempts, dead[0].last_status), (1, None));
    assert_eq!(
        receiver.count(),
        1,
        "nothing was sent for the broken render"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn json_values_are_escaped_and_the_default_body_is_the_event() {
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let targets = webhook("escaped", &receiver.url("/e"), "headers = { \"Content-Type\" = \"application/json\" }\nbody = '{\"m\": \"{{event.title}}\"}'")
        + &webhook("default", &receiver.url("/d"), "");
    let relay = spawn_relay(&format!("{SOURCES}{targets}"), dir.path()).await;
    let tricky = "quote \" backslash \\ newline \n tab \t <b>&amp;</b> é";
    let (status, _) = post(
        &url(&relay, SG),
        Some("application/json"),
        sg_v3("m1", "down", tricky),
    )
    .await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    let escaped = got.iter().find(|r| r.uri == "/e").unwrap();
    assert_eq!(escaped.json(), json!({"m": tricky}));
    let default = got.iter().find(|r| r.uri == "/d").unwrap();
    assert_eq!(default.header("content-type"), Some("application/json"));
    let ev = default.json();
    assert_eq!(ev["title"], tricky);
    assert_eq!(ev["alert"]["entity_id"], "m1");
    assert_eq!(ev["alert"]["message_type"], "CRITICAL");
    assert_eq!(ev["format"], "statusgator.v3");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn retries_follow_the_policy_then_succeed() {
    let dir = tempdir();
    let receiver = Receiver::statuses(&[503, 503]).await;
    let target = webhook(
        "flaky",
        &receiver.url("/in"),
        "retry = { initial_delay = \"300ms\", multiplier = 2.0, jitter = 0.0 }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    let (status, _) = send_fixture(&relay, SG, "statusgator-v1.form").await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 3, "exactly three attempts");
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(300) && gap1 < Duration::from_millis(1500),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(600) && gap2 < Duration::from_millis(2500),
        "second retry after {gap2:?}"
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "every attempt sends the same request"
    );

    let id = relay.target_id("flaky").unwrap();
    assert!(relay.store().dead_letters(id).await.unwrap().is_empty());
    let stats = relay.store().stats().await.unwrap();
    assert_eq!((stats.done, stats.pending, stats.dead), (1, 0, 0));
    let d = relay.store().delivery(1).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (DeliveryState::Done, 3));
    let attempts = relay.store().attempts(1).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.number, a.status, a.error.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, Some(503), Some("HTTP 503".into())),
            (2, Some(503), Some("HTTP 503".into())),
            (3, Some(200), None)
        ]
    );
    assert_eq!(attempts[0].response_excerpt.as_deref(), Some("answer 503"));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn permanent_failures_and_exhausted_retries_become_dead_letters() {
    let dir = tempdir();
    let gone = Receiver::statuses(&[404]).await;
    let down = Receiver::scripted(Arc::new(|_, _| (500, vec![], "still broken".into()))).await;
    let targets = webhook("gone", &gone.url("/x"), "")
        + &webhook(
            "down",
            &down.url("/y"),
            "retry = { max_retries = 2, initial_delay = \"50ms\", jitter = 0.0 }",
        );
    let relay = spawn_relay(&format!("{SOURCES}{targets}"), dir.path()).await;
    let (status, _) = send_fixture(&relay, SG, "statusgator-v2.json").await;
    assert_eq!(status, 200);
    let store = relay.store();
    let (gone_id, down_id) = (
        relay.target_id("gone").unwrap(),
        relay.target_id("down").unwrap(),
    );
    let mut dead = (Vec::new(), Vec::new());
    for _ in 0..300 {
        dead = (
            store.dead_letters(gone_id).await.unwrap(),
            store.dead_letters(down_id).await.unwrap(),
        );
        if !dead.0.is_empty() && !dead.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (g, d) = (&dead.0[..], &dead.1[..]);
    assert_eq!(g.len(), 1, "404 is dead at once");
    assert_eq!(
        (g[0].state, g[0].attempts, g[0].last_status),
        (DeliveryState::Dead, 1, Some(404))
    );
    assert_eq!(g[0].last_error.as_deref(), Some("HTTP 404"));
    assert_eq!(g[0].response_excerpt.as_deref(), Some("answer 404"));
    assert_eq!(gone.count(), 1);
    assert_eq!(d.len(), 1, "500 is dead after its retries");
    assert_eq!((d[0].attempts, d[0].last_status), (3, Some(500)));
    assert_eq!(d[0].response_excerpt.as_deref(), Some("still broken"));
    assert_eq!(down.count(), 3);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_failures_are_retried_and_recorded() {
    let dir = tempdir();
    // Bind and drop to find a port nothing listens on.
    let port = free_port();
    let target = webhook(
        "nobody",
        &format!("http://127.0.0.1:{port}/x"),
        "retry = { max_retries = 1, initial_delay = \"50ms\" }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    send_fixture(&relay, SG, "statusgator-v2.json").await;
    let id = relay.target_id("nobody").unwrap();
    assert!(
        wait_until_async(|| async { !relay.store().dead_letters(id).await.unwrap().is_empty() })
            .await
    );
    let attempts = relay.store().attempts(1).await.unwrap();
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a.status, None);
        assert!(
            a.error.as_deref().unwrap().starts_with("connection failed"),
            "{a:?}"
        );
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_after_from_the_receiver_is_honoured() {
    let dir = tempdir();
    let receiver = Receiver::scripted(Arc::new(|_, n| {
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
    let target = webhook(
        "limited",
        &receiver.url("/x"),
        "retry = { initial_delay = \"10ms\", jitter = 0.0 }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    send_fixture(&relay, SG, "statusgator-v2.json").await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "retried after {gap:?}, before Retry-After"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_mid_schedule_keeps_the_attempt_count() {
    let dir = tempdir();
    let first = Receiver::statuses(&[503, 503, 503]).await;
    let addr = first.addr;
    let target = webhook(
        "t",
        &first.url("/x"),
        "retry = { initial_delay = \"1500ms\", jitter = 0.0 }",
    );
    let config = format!("{SOURCES}{target}");
    let relay = spawn_relay(&config, dir.path()).await;
    let (status, _) = send_fixture(&relay, PD, "pagerduty-v3-ping.json").await;
    assert_eq!(status, 202);
    first.wait_for(1, Duration::from_secs(5)).await;
    assert!(
        wait_until_async(|| async {
            relay.store().delivery(1).await.unwrap().unwrap().attempts == 1
        })
        .await
    );
    relay.shutdown().await.unwrap();
    first.stop().await;

    // Same store, same address, now healthy.
    let second = Receiver::scripted_on(
        Arc::new(|_, _| (200, vec![], "ok".into())),
        &addr.to_string(),
    )
    .await;
    let relay = spawn_relay(&config, dir.path()).await;
    let d = relay.store().delivery(1).await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.attempts),
        (DeliveryState::Pending, 1),
        "the schedule survived the restart"
    );
    second.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        wait_until_async(|| async {
            relay.store().delivery(1).await.unwrap().unwrap().state == DeliveryState::Done
        })
        .await
    );
    let attempts = relay.store().attempts(1).await.unwrap();
    let seen: Vec<_> = attempts.iter().map(|a| (a.number, a.status)).collect();
    assert_eq!(seen, [(1, Some(503)), (2, Some(200))]);
    assert_eq!(second.count(), 1);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_entity_waits_in_order_while_another_goes_ahead() {
    let dir = tempdir();
    // Entity A's first delivery fails twice; everything else succeeds.
    let a_failures = Arc::new(AtomicUsize::new(0));
    let af = a_failures.clone();
    let receiver = Receiver::scripted(Arc::new(move |r, _| {
        let body = r.text();
        if body.contains("\"A-1\"") && af.load(Ordering::SeqCst) < 2 {
            af.fetch_add(1, Ordering::SeqCst);
            return (503, vec![], "not yet".into());
        }
        (200, vec![], "ok".into())
    }))
    .await;
    let target = webhook(
        "status-page",
        &receiver.url("/x"),
        "body = '\"{{event.title}}\"'\nretry = { initial_delay = \"400ms\", jitter = 0.0 }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    for (monitor, status, msg) in [
        ("A", "down", "A-1"),
        ("A", "up", "A-2"),
        ("B", "down", "B-1"),
    ] {
        let (code, _) = post(
            &url(&relay, SG),
            Some("application/json"),
            sg_v3(monitor, status, msg),
        )
        .await;
        assert_eq!(code, 200);
    }
    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log: Vec<(String, u16)> = receiver
        .requests()
        .iter()
        .map(|r| (r.text(), r.status))
        .collect();
    assert_eq!(log.len(), 5, "{log:?}");
    let successes: Vec<&str> = log
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(b, _)| b.as_str())
        .collect();
    assert_eq!(
        successes,
        ["\"B-1\"", "\"A-1\"", "\"A-2\""],
        "B went ahead; A kept its order"
    );
    let first_a2 = log.iter().position(|(b, _)| b == "\"A-2\"").unwrap();
    let a1_done = log
        .iter()
        .position(|(b, s)| b == "\"A-1\"" && *s == 200)
        .unwrap();
    assert!(
        first_a2 > a1_done,
        "A-2 was never sent before A-1 succeeded: {log:?}"
    );
    let b1 = got.iter().find(|r| r.text() == "\"B-1\"").unwrap();
    assert!(
        b1.at < got[0].at + Duration::from_millis(300),
        "B did not wait for A's retries"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_target_does_not_delay_a_healthy_one() {
    let dir = tempdir();
    let healthy = Receiver::ok().await;
    let broken = Receiver::scripted(Arc::new(|_, _| (503, vec![], "down".into()))).await;
    let targets = webhook("healthy", &healthy.url("/ok"), "")
        + &webhook(
            "broken",
            &broken.url("/down"),
            "retry = { initial_delay = \"10s\" }",
        );
    let relay = spawn_relay(&format!("{SOURCES}{targets}"), dir.path()).await;
    for i in 0..20 {
        let (code, _) = post(
            &url(&relay, SG),
            Some("application/json"),
            sg_v3(&format!("m{}", i % 4), "down", &format!("n{i}")),
        )
        .await;
        assert_eq!(code, 200);
    }
    healthy.wait_for(20, Duration::from_secs(5)).await;
    assert_eq!(
        broken.count(),
        4,
        "one attempt per key head; the rest wait behind their head"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn file_target_appends_one_line_per_delivery() {
    let dir = tempdir();
    let config = format!("{SOURCES}\n[[targets]]\nname = \"outbox\"\nkind = \"file\"\npath = \"{{dir}}/out/outbox.jsonl\"\n");
    let relay = spawn_relay(&config, dir.path()).await;
    let (status, body) = send_fixture(&relay, SG, "statusgator-v1.form").await;
    assert_eq!(status, 200);
    let (status, _) = send_fixture(&relay, PD, "pagerduty-v3-ping.json").await;
    assert_eq!(status, 202);
    let path = dir.path().join("out/outbox.jsonl");
    assert!(wait_until(Duration::from_secs(5), || read_lines(&path).len() == 2).await);
    let lines = read_lines(&path);
    let sg = lines
        .iter()
        .find(|l| l["event"]["source"] == "statusgator")
        .unwrap();
    assert_eq!(sg["event"]["id"], body["events"][0]);
    assert_eq!(sg["delivery"]["target"], "outbox");
    assert_eq!(sg["delivery"]["attempt"], 1);
    assert_eq!(
        sg["raw"]["content_type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        sg["raw"]["body"].as_str().unwrap().as_bytes(),
        fixture("statusgator-v1.form").as_slice()
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn targets_can_take_events_from_chosen_sources_only() {
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let target = webhook("pd-only", &receiver.url("/pd"), "sources = [\"pagerduty\"]");
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    send_fixture(&relay, SG, "statusgator-v2.json").await;
    send_fixture(&relay, PD, "pagerduty-v3-ping.json").await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(got[0].json()["source"], "pagerduty");
    let stats = relay.store().stats().await.unwrap();
    assert_eq!((stats.events, stats.done + stats.pending), (2, 1));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_receiver_is_timed_out_and_retried() {
    let dir = tempdir();
    let receiver = Receiver::scripted(Arc::new(|_, n| {
        let delay = if n == 0 { "3000" } else { "0" };
        (
            200,
            vec![("x-test-delay-ms".into(), delay.into())],
            "ok".into(),
        )
    }))
    .await;
    let target = webhook(
        "slow",
        &receiver.url("/x"),
        "timeout = \"300ms\"\nretry = { initial_delay = \"50ms\", jitter = 0.0 }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    let (status, _) = send_fixture(&relay, PD, "pagerduty-v3-ping.json").await;
    assert_eq!(status, 202);
    assert!(
        wait_until_async(|| async {
            relay.store().delivery(1).await.unwrap().unwrap().state == DeliveryState::Done
        })
        .await
    );
    let attempts = relay.store().attempts(1).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.status, a.error.clone()))
        .collect();
    assert_eq!(seen, [(None, Some("timed out".into())), (Some(200), None)]);
    assert!(
        attempts[0].latency_ms >= 300 && attempts[0].latency_ms < 2500,
        "{:?}",
        attempts[0]
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_custom_ordering_key_template_groups_deliveries() {
    let dir = tempdir();
    // Everything from one source shares one key: the second event waits for the first.
    let receiver = Receiver::statuses(&[503]).await;
    let target = webhook(
        "one-lane",
        &receiver.url("/x"),
        "ordering_key = \"{{event.source}}\"\nbody = '{{event.title}}'\nretry = { initial_delay = \"300ms\", jitter = 0.0 }",
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}"), dir.path()).await;
    for (monitor, msg) in [("A", "first"), ("B", "second")] {
        let (status, _) = post(
            &url(&relay, SG),
            Some("application/json"),
            sg_v3(monitor, "down", msg),
        )
        .await;
        assert_eq!(status, 200);
    }
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    let log: Vec<_> = got.iter().map(|r| (r.text(), r.status)).collect();
    assert_eq!(
        log,
        [
            ("first".into(), 503),
            ("first".into(), 200),
            ("second".into(), 200)
        ]
    );
    let d = relay.store().delivery(2).await.unwrap().unwrap();
    assert_eq!(d.ordering_key, "statusgator");
    relay.shutdown().await.unwrap();
}
