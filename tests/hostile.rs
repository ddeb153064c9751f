//! The malformed-input matrix over real HTTP: each input gets its documented answer, and a
//! rejected request stores nothing. (Slow clients and timeouts: tests/ingest.rs.)

mod common;

use common::*;
use hookrelay::store::Store;

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
