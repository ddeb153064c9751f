//! The malformed-input matrix over real HTTP: each input gets its documented answer, and a
//! rejected request stores nothing. (Slow clients and timeouts: tests/ingest.rs.)

mod common;

use common::*;
use hookrelay::store::Store;
use std::time::Duration;

const SG: &str = "/com.statusgator/v1";
const PD: &str = "/com.pagerduty/v1";

/// What, where, Content-Type, body, expected status, expected code (empty: accepted).
type Case<'a> = (&'a str, &'a String, Option<&'a str>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn malformed_input_matrix() {
    let dir = tempdir();
    let relay = spawn_relay(SOURCES, dir.path()).await;
    let sg = url(&relay, SG);
    let pd = url(&relay, PD);
    let v3 = r#"{"type":"StatusChange","monitor":{"id":"m"},"status":"down","recorded_at":"2025-01-01T00:00:00Z"}"#;
    // (what, url, content type, body, status, code or "" for accepted, stored events after)
    let cases: Vec<Case> = vec![
        ("JSON with a charset", &sg, Some("application/json; charset=utf-8"), v3.into(), 200, ""),
        ("JSON with upper-case media type", &pd, Some("Application/JSON"), include_bytes!("fixtures/pagerduty-v3-ping.json").to_vec(), 202, ""),
        ("form with a charset", &sg, Some("application/x-www-form-urlencoded; charset=UTF-8"), include_bytes!("fixtures/statusgator-v1-aws.form").to_vec(), 200, ""),
        ("duplicate keys: the last one counts", &sg, Some("application/json"), br#"{"type":"StatusChange","status":"up","status":"down","monitor":{"id":"dup"}}"#.to_vec(), 200, ""),
        ("an integer beyond 64 bits", &pd, Some("application/json"), br#"{"event":{"id":"big","event_type":"incident.triggered","data":{"number":123456789012345678901234567890}}}"#.to_vec(), 202, ""),
        ("a number beyond any float", &pd, Some("application/json"), br#"{"event":{"id":"huge","data":{"number":1e999999}}}"#.to_vec(), 400, "malformed_json"),
        ("form with ; separators", &sg, Some("application/x-www-form-urlencoded"), b"service_name=Semi;current_status=down;last_status=up".to_vec(), 200, ""),
        ("form with a raw #", &sg, Some("application/x-www-form-urlencoded"), b"service_name=Hash#Tag&current_status=warn".to_vec(), 200, ""),
        ("form with bare keys", &sg, Some("application/x-www-form-urlencoded"), b"service_name=Bare&current_status=up&flag&&".to_vec(), 200, ""),
        ("form with a bad escape", &sg, Some("application/x-www-form-urlencoded"), b"service_name=%G1&current_status=up".to_vec(), 400, "malformed_form"),
        ("form missing its fields", &sg, Some("application/x-www-form-urlencoded"), b"a=1&b=2".to_vec(), 400, "unrecognized_payload"),
        ("truncated JSON", &pd, Some("application/json"), br#"{"event":{"id":"x","event_type":"incident.tri"#.to_vec(), 400, "malformed_json"),
        ("invalid UTF-8 in a form", &sg, Some("application/x-www-form-urlencoded"), b"service_name=\xc3\x28&current_status=up".to_vec(), 400, "invalid_utf8"),
        ("a percent-encoded invalid UTF-8 value", &sg, Some("application/x-www-form-urlencoded"), b"service_name=%C3%28&current_status=up".to_vec(), 400, "malformed_form"),
        ("multipart", &sg, Some("multipart/form-data; boundary=x"), b"--x--".to_vec(), 415, "unsupported_media_type"),
        ("NUL bytes", &pd, Some("application/json"), b"{\"event\":\0}".to_vec(), 400, "malformed_json"),
        ("10,000-deep nesting", &pd, Some("application/json"), format!("{{\"event\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(), 400, "malformed_json"),
        ("10,000-deep objects", &sg, Some("application/json"), format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(), 400, "malformed_json"),
    ];
    let mut stored = 0;
    for (what, to, ct, body, status, code) in cases {
        let (got, answer) = post(to, ct, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        if code.is_empty() {
            stored += 1;
        } else {
            assert_eq!(answer["code"], code, "{what}: {answer}");
        }
        assert_eq!(
            relay.store().stats().await.unwrap().events,
            stored,
            "{what}: stored events"
        );
    }
    // What was accepted reads as intended.
    let (_, dup) = post(
        &sg,
        Some("application/json"),
        br#"{"type":"StatusChange","status":"up","status":"warn","monitor":{"id":"dup2"}}"#
            .to_vec(),
    )
    .await;
    let id = uuid::Uuid::parse_str(dup["events"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        relay
            .store()
            .event(id)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_deref(),
        Some("warn")
    );
    let (_, hash) = post(
        &sg,
        Some("application/x-www-form-urlencoded"),
        b"service_name=A#B&current_status=down".to_vec(),
    )
    .await;
    let id = uuid::Uuid::parse_str(hash["events"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        relay
            .store()
            .event(id)
            .await
            .unwrap()
            .unwrap()
            .service
            .name
            .as_deref(),
        Some("A#B")
    );

    // Oversized headers: refused by the HTTP layer before any handler runs.
    let resp = client()
        .post(&sg)
        .header("content-type", "application/json")
        .header("x-padding", "p".repeat(512 * 1024))
        .body(v3)
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 431, "oversized headers"),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.to_string().contains("connection"),
            "{e}"
        ),
    }
    let before = relay.store().stats().await.unwrap().events;
    assert_eq!(before, stored + 2);
    relay.shutdown().await.unwrap();
}

/// The events a request stored, read back from the store.
async fn stored(relay: &hookrelay::Relay, answer: &serde_json::Value) -> Vec<hookrelay::Event> {
    let mut out = Vec::new();
    for id in answer["events"].as_array().cloned().unwrap_or_default() {
        let id = uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
        out.push(relay.store().event(id).await.unwrap().expect("stored"));
    }
    out
}

/// Finding 1: a legacy PagerDuty batch costs its own size. Guards the per-request message cap
/// (`server.max_batch_messages`: raise it and the 16,000-message batch is stored, taking
/// seconds and hundreds of MiB) and each message's own bytes as its event's raw body (give
/// every event the whole body again and the stored bytes of the batch at the cap grow to
/// 100 times its size). Figures held: answer time (generous 10 s) and stored body bytes.
#[tokio::test]
async fn a_pagerduty_batch_costs_its_own_size() {
    let dir = tempdir();
    let relay = spawn_relay(SOURCES, dir.path()).await;
    let pd = url(&relay, PD);

    // 16,000 tiny messages in 32 KB: refused whole, at once.
    let tiny = format!("{{\"messages\":[{}{{}}]}}", "{},".repeat(15_999));
    let started = std::time::Instant::now();
    let (status, answer) = post(&pd, Some("application/json"), tiny).await;
    let took = started.elapsed();
    assert_eq!(status, 413, "{}", answer["code"]);
    assert_eq!(answer["code"], "too_many_messages");
    assert_eq!(
        answer["error"],
        "the batch has 16000 messages; at most 100 are accepted in one request"
    );
    assert!(took < Duration::from_secs(10), "answered in {took:?}");
    assert_eq!(relay.store().stats().await.unwrap().events, 0);

    // At the cap, 100 messages of ~10 KB: each event keeps its own message, byte for byte.
    let messages: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"id":"m{i}", "type":"incident.trigger","data":{{"incident":{{"id":"P{i}","trigger_summary_data":{{"subject":"{}"}}}}}}}}"#,
                "x".repeat(10_000)
            )
        })
        .collect();
    let body = format!("{{\"messages\": [{}]}}", messages.join(" ,\n "));
    let (status, answer) = post(&pd, Some("application/json"), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let events = stored(&relay, &answer).await;
    assert_eq!(events.len(), 100);
    for (event, message) in events.iter().zip(&messages) {
        assert_eq!(event.raw.body.as_ref(), message.as_bytes(), "its own bytes");
        assert_eq!(event.raw.content_type.as_deref(), Some("application/json"));
    }
    let kept: usize = events.iter().map(|e| e.raw.body.len()).sum();
    assert!(
        kept <= body.len(),
        "stored {kept} body bytes for a {}-byte request",
        body.len()
    );
    // The same batch again is recognised message by message.
    let (status, again) = post(&pd, Some("application/json"), body).await;
    assert_eq!((status, again["status"].as_str()), (202, Some("duplicate")));
    relay.shutdown().await.unwrap();
}

/// Finding 2: form bodies parse in linear time, and a large one never holds up the relay's
/// async threads. Guards the parser's key index and its field cap (scan earlier keys for
/// each new one, as before, and the 1 MiB form of distinct keys takes minutes: the bound
/// below fails) and, on this single-threaded runtime, that `/healthz` keeps answering while
/// large forms are parsed. Figures held: answer time (10 s) and the slowest `/healthz`
/// answer during the load (2 s; it stalled 9 s before).
#[tokio::test]
async fn large_forms_parse_in_linear_time_and_health_keeps_answering() {
    let dir = tempdir();
    let relay = spawn_relay(SOURCES, dir.path()).await;
    let sg = url(&relay, SG);
    let form = "application/x-www-form-urlencoded";
    let health = format!("http://{}/healthz", relay.admin_addr().unwrap());

    // Distinct keys up to the 1 MiB limit: refused after the 1,000th field.
    let mut distinct = String::from("service_name=S&current_status=down");
    let mut i = 0;
    while distinct.len() < (1 << 20) - 16 {
        distinct.push_str(&format!("&k{i}"));
        i += 1;
    }
    // Under the field cap, with large values: accepted.
    let big_values = format!(
        "service_name=Big&current_status=down&last_status=up&{}",
        (0..900)
            .map(|i| format!("k{i}={}", "v".repeat(1000)))
            .collect::<Vec<_>>()
            .join("&")
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let status = client().get(&health).send().await.unwrap().status();
                assert_eq!(status, 200);
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        })
    };
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        post(&sg, Some(form), distinct.clone()),
        post(&sg, Some(form), distinct),
        post(&sg, Some(form), big_values),
    );
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let slowest = prober.await.unwrap();
    for (status, answer) in [a, b] {
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["code"], "malformed_form");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("more than 1000 fields"),
            "{answer}"
        );
    }
    assert_eq!(c.0, 200, "{}", c.1);
    assert!(took < Duration::from_secs(10), "answered in {took:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "/healthz took {slowest:?}"
    );
    assert_eq!(relay.store().stats().await.unwrap().events, 1);
    relay.shutdown().await.unwrap();
}

/// A keep-alive connection from `from` that got its 404 and now holds its slot; `None` when
/// the relay closed it instead of answering.
async fn hold_connection(to: std::net::SocketAddr, from: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.ok()?;
    s.write_all(b"GET /nothing HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 404")
        .then_some(s)
}

/// Finding 3: one client cannot take every connection. Guards the per-address limit (without
/// it, 127.0.0.2 holds all 8 slots and the real sender waits out the 30 s header timeout) and
/// closing idle keep-alive connections first at the global cap (without it, two addresses
/// holding 4 idle connections each do the same). Figure held: the real sender's answer time
/// (generous 10 s, against 30 s blocked).
#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let dir = tempdir();
    let config = format!("{SOURCES}\n[server]\nheader_timeout = \"30s\"\nmax_connections = 8\nmax_connections_per_address = 4\n");
    let relay = spawn_relay(&config, dir.path()).await;
    let addr = relay.local_addr();
    let real = |relay: &hookrelay::Relay| {
        let sg = url(relay, SG);
        async move {
            let started = std::time::Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                post(
                    &sg,
                    Some("application/x-www-form-urlencoded"),
                    fixture("statusgator-v1.form"),
                ),
            )
            .await;
            (answer.map(|(status, _)| status), started.elapsed())
        }
    };

    // One address: 4 connections served and kept, the other 4 closed on arrival.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(hold_connection(addr, "127.0.0.2").await);
    }
    assert_eq!(held.iter().filter(|c| c.is_some()).count(), 4);
    let (status, took) = real(&relay).await;
    assert_eq!(status, Ok(200), "the real sender waited {took:?}");

    // Two addresses fill the table with idle keep-alive connections: one makes room.
    for _ in 0..4 {
        held.push(hold_connection(addr, "127.0.0.3").await);
    }
    assert_eq!(held.iter().filter(|c| c.is_some()).count(), 8);
    let (status, took) = real(&relay).await;
    assert_eq!(status, Ok(200), "the real sender waited {took:?}");
    drop(held);
    relay.shutdown().await.unwrap();
}

/// Finding 4: a signed request cannot be stored again by changing what the signature does not
/// cover. Guards that a source with `secrets` ignores the unsigned `X-Webhook-Id` and
/// deduplicates on the signed event id (prefer the header again and the replay is stored).
#[tokio::test]
async fn a_signed_request_replayed_with_a_new_webhook_id_is_a_duplicate() {
    let sig = String::from_utf8(fixture("pagerduty-v3-incident-triggered.sig")).unwrap();
    let mut lines = sig.lines();
    let (secret, header) = (lines.next().unwrap(), lines.next().unwrap());
    let config = SOURCES.replace(
        "path = \"/com.pagerduty/v1\"",
        &format!("path = \"/com.pagerduty/v1\"\nsecrets = [{secret:?}]"),
    );
    let dir = tempdir();
    let relay = spawn_relay(&config, dir.path()).await;
    let body = fixture("pagerduty-v3-incident-triggered.json");
    let mut answers = Vec::new();
    for (webhook_id, query) in [("w-1", ""), ("w-2", "?aid=other"), ("w-3", "?p=web")] {
        let resp = client()
            .post(format!("{}{query}", url(&relay, PD)))
            .header("content-type", "application/json")
            .header("x-pagerduty-signature", header)
            .header("x-webhook-id", webhook_id)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        answers.push(resp.json::<serde_json::Value>().await.unwrap());
    }
    let events = stored(&relay, &answers[0]).await;
    assert_eq!(
        events[0].dedup_key, "01BZYIL05THJDFF2Y08X9SVMTU",
        "the signed event id"
    );
    assert_eq!(answers[1]["status"], "duplicate");
    assert_eq!(answers[2]["status"], "duplicate");
    assert_eq!(relay.store().stats().await.unwrap().events, 1);
    relay.shutdown().await.unwrap();
}

/// Finding 8: a dedup key is never larger than a small bound, however long the id it comes
/// from. Guards the hashing of long keys in normalize (remove it and the 200 KB header becomes
/// the stored key); the same long id is still recognised as a duplicate.
#[tokio::test]
async fn a_huge_webhook_id_is_stored_as_a_digest() {
    let dir = tempdir();
    let relay = spawn_relay(SOURCES, dir.path()).await;
    let huge = "w".repeat(200 * 1024);
    let send = || {
        client()
            .post(url(&relay, PD))
            .header("content-type", "application/json")
            .header("x-webhook-id", huge.as_str())
            .body(fixture("pagerduty-v3-incident-resolved.json"))
            .send()
    };
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let answer: serde_json::Value = resp.json().await.unwrap();
    let event = stored(&relay, &answer).await.remove(0);
    assert!(
        event.dedup_key.starts_with("sha256:"),
        "{}",
        &event.dedup_key[..40]
    );
    assert!(
        event.dedup_key.len() <= 128,
        "{} bytes",
        event.dedup_key.len()
    );
    let again: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    relay.shutdown().await.unwrap();
}
