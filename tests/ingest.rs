//! Ingest end to end: every sample through real HTTP into a real store, and every way a
//! request can be wrong.

mod common;

use std::time::Duration;

use common::*;
use hookrelay::store::Store;
use hookrelay::Event;
use serde_json::json;

const OUTBOX: &str = r#"
[[targets]]
name = "outbox"
kind = "file"
path = "{dir}/outbox.jsonl"
"#;

async fn relay_with_outbox(dir: &std::path::Path) -> hookrelay::Relay {
    spawn_relay(&format!("{SOURCES}{OUTBOX}"), dir).await
}

/// Posts a fixture and returns the answer and the stored events.
async fn ingest(
    relay: &hookrelay::Relay,
    path: &str,
    file: &str,
    ct: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value, Vec<Event>) {
    let mut req = client()
        .post(url(relay, path))
        .header("content-type", ct)
        .body(fixture(file));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    let mut events = Vec::new();
    for id in body["events"].as_array().cloned().unwrap_or_default() {
        let id = uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
        events.push(
            relay
                .store()
                .event(id)
                .await
                .unwrap()
                .expect("event stored"),
        );
    }
    (status, body, events)
}

fn one(events: Vec<Event>) -> Event {
    assert_eq!(events.len(), 1, "{events:#?}");
    events.into_iter().next().unwrap()
}

const SG: &str = "/com.statusgator/v1";
const PD: &str = "/com.pagerduty/v1";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

#[tokio::test]
async fn statusgator_v1_form() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, _, events) = ingest(
        &relay,
        &format!("{SG}?p=srv&aid=sg1"),
        "statusgator-v1.form",
        FORM,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let e = one(events);
    assert_eq!(
        (e.source.as_str(), e.format.as_str(), e.event_type.as_str()),
        ("statusgator", "statusgator.v1", "status_change")
    );
    assert_eq!(e.service.name.as_deref(), Some("CloudFlare"));
    assert_eq!(
        e.service.icon_url.as_deref(),
        Some("https://dwxjd9cd6rwno.cloudfront.net/favicons/cloudflare.ico")
    );
    assert_eq!(
        e.service.status_page_url.as_deref(),
        Some("https://www.cloudflarestatus.com/")
    );
    assert_eq!(
        e.service.home_page_url.as_deref(),
        Some("http://www.cloudflare.com")
    );
    assert_eq!(
        (e.status.as_deref(), e.previous_status.as_deref()),
        (Some("up"), Some("warn"))
    );
    assert_eq!(e.occurred_at, "2016-05-19T09:26:31Z");
    assert_eq!(e.title, "CloudFlare is up");
    assert_eq!(e.alert["entity_id"], "CloudFlare");
    assert_eq!(e.alert["message_type"], "RECOVERY");
    assert_eq!(e.alert["entity_state"], "OK");
    assert_eq!(e.alert["monitoring_tool"], "StatusGator");
    assert_eq!(e.alert["timestamp"], "1463649991");
    assert_eq!(e.query.get("p").map(String::as_str), Some("srv"));
    assert_eq!(e.query.get("aid").map(String::as_str), Some("sg1"));
    assert_eq!(
        e.raw.body.as_ref(),
        fixture("statusgator-v1.form").as_slice()
    );
    assert_eq!(e.raw.content_type.as_deref(), Some(FORM));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn statusgator_v1_form_with_plus_spaces() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, _, events) = ingest(&relay, SG, "statusgator-v1-aws.form", FORM, &[]).await;
    assert_eq!(status, 200);
    let e = one(events);
    assert_eq!(e.service.name.as_deref(), Some("Amazon Web Services"));
    assert_eq!(e.alert["message_type"], "WARNING");
    assert_eq!(e.occurred_at, "2017-11-11T15:36:18Z");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn statusgator_v2() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, _, events) = ingest(&relay, SG, "statusgator-v2.json", JSON, &[]).await;
    assert_eq!(status, 200);
    let e = one(events);
    assert_eq!(e.format, "statusgator.v2");
    assert_eq!(e.service.slug.as_deref(), Some("heroku"));
    assert_eq!(
        (e.status.as_deref(), e.previous_status.as_deref()),
        (Some("warn"), Some("up"))
    );
    assert_eq!(e.title, "Application deployment performance");
    assert_eq!(
        e.details.as_deref(),
        Some("Some users are experiencing deployment delays")
    );
    assert_eq!(e.occurred_at, "2022-01-20T14:52:30Z");
    assert_eq!(e.components.len(), 1);
    assert_eq!(e.components[0].name, "Apps");
    assert_eq!(e.components[0].group, None);
    assert_eq!(
        (
            e.components[0].status.as_deref(),
            e.components[0].previous_status.as_deref()
        ),
        (Some("warn"), Some("up"))
    );
    assert_eq!(e.alert["entity_id"], "heroku");
    assert_eq!(e.alert["entity_display_name"], "Heroku is warn");
    assert_eq!(e.alert["message_type"], "WARNING");
    assert_eq!(
        e.alert["state_message"],
        "Application deployment performance\n\nSome users are experiencing deployment delays"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn statusgator_v3_status_change_and_early_warning() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, _, events) =
        ingest(&relay, SG, "statusgator-v3-status-change.json", JSON, &[]).await;
    assert_eq!(status, 200);
    let e = one(events);
    assert_eq!(
        (e.format.as_str(), e.event_type.as_str()),
        ("statusgator.v3", "status_change")
    );
    assert_eq!(e.service.id.as_deref(), Some("OUQJLhNcSb"));
    assert_eq!(e.service.name.as_deref(), Some("OpenAI"));
    assert_eq!(
        (e.status.as_deref(), e.previous_status.as_deref()),
        (Some("up"), Some("down"))
    );
    assert_eq!(e.title, "Elevated Error Rate on ChatGPT");
    assert_eq!(e.occurred_at, "2025-07-17T02:20:45Z");
    let comps: Vec<_> = e
        .components
        .iter()
        .map(|c| {
            (
                c.group.as_deref(),
                c.name.as_str(),
                c.previous_status.as_deref(),
                c.status.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        comps,
        vec![
            (Some("APIs"), "Chat", Some("up"), Some("down")),
            (Some("APIs"), "Images", Some("up"), Some("down"))
        ]
    );
    assert_eq!(e.alert["entity_id"], "UIMPLWZg9D");
    assert_eq!(e.alert["message_type"], "RECOVERY");
    assert_eq!(e.alert["monitor_type"], "ServiceMonitor");
    assert_eq!(e.alert["board_name"], "Demo 2");

    let (status, _, events) =
        ingest(&relay, SG, "statusgator-v3-early-warning.json", JSON, &[]).await;
    assert_eq!(status, 200);
    let e = one(events);
    assert_eq!(e.event_type, "early_warning");
    assert_eq!(e.status, None);
    assert_eq!(e.title, "Service outage");
    assert_eq!(e.occurred_at, "2025-01-29T20:54:48Z");
    assert_eq!(e.alert["entity_id"], "uZoM2YK1rn");
    assert_eq!(e.alert["message_type"], "WARNING");
    assert_eq!(
        e.alert["yes_vote_url"],
        "https://statusgator.com/signal_alerts/UkLWZg9DAJ/confirm"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn statusgator_bodies_are_recognised_without_a_useful_content_type() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    for (file, ct) in [
        ("statusgator-v3-status-change.json", None),
        ("statusgator-v3-status-change.json", Some(FORM)),
        ("statusgator-v2.json", Some("text/plain")),
        ("statusgator-v1.form", None),
        ("statusgator-v1.form", Some("application/octet-stream")),
    ] {
        let (status, body) = post(&url(&relay, SG), ct, fixture(file)).await;
        assert_eq!(status, 200, "{file} as {ct:?}: {body}");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn pagerduty_legacy_v1_and_v2() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, _, events) = ingest(&relay, PD, "pagerduty-v1-trigger.json", JSON, &[]).await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(
        (e.format.as_str(), e.event_type.as_str()),
        ("pagerduty.v1", "incident.trigger")
    );
    assert_eq!(e.dedup_key, "a52d3f80-d9a7-11e5-8db3-22000ad5aec9");
    assert_eq!(e.title, "CPU Load High on xdb_production_echo");
    assert_eq!(e.status.as_deref(), Some("triggered"));
    assert_eq!(e.service.name.as_deref(), Some("Production XDB Cluster"));
    assert_eq!(e.occurred_at, "2016-02-22T21:02:55Z");
    assert_eq!(e.alert["entity_id"], "PRORDTY");
    assert_eq!(e.alert["message_type"], "CRITICAL");
    assert_eq!(e.alert["incident_number"], "2126");
    assert_eq!(e.alert["urgency"], "high");
    assert_eq!(e.alert["monitoring_tool"], "PagerDuty");

    let (status, _, events) = ingest(&relay, PD, "pagerduty-v1-resolve.json", JSON, &[]).await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(e.event_type, "incident.resolve");
    assert_eq!(e.title, "executordetectedfailureforgoeuro");
    assert_eq!(e.alert["entity_id"], "P850PWC");
    assert_eq!(e.alert["message_type"], "RECOVERY");
    assert_eq!(e.occurred_at, "2014-12-17T17:11:46Z");

    let (status, _, events) = ingest(
        &relay,
        PD,
        "pagerduty-v2-trigger.json",
        JSON,
        &[("user-agent", "PagerDuty-Webhook/V2.0")],
    )
    .await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(
        (e.format.as_str(), e.event_type.as_str()),
        ("pagerduty.v2", "incident.trigger")
    );
    assert_eq!(e.dedup_key, "69a7ced0-a2cd-11e7-a799-22000a15839c");
    assert_eq!(e.title, "My new incident");
    assert_eq!(e.service.name.as_deref(), Some("Production XDB Cluster"));
    assert_eq!(e.alert["entity_id"], "PRORDTY");
    assert_eq!(e.alert["incident_number"], "33");
    assert_eq!(e.alert["message_type"], "CRITICAL");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn pagerduty_v3_incidents_and_ping() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let headers = [
        ("x-webhook-id", "wh-1"),
        ("x-webhook-subscription", "PXSUIZH"),
        ("user-agent", "PagerDuty-Webhook/V3.0"),
    ];
    let (status, _, events) = ingest(
        &relay,
        PD,
        "pagerduty-v3-incident-triggered.json",
        JSON,
        &headers,
    )
    .await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(
        (e.format.as_str(), e.event_type.as_str()),
        ("pagerduty.v3", "incident.triggered")
    );
    assert_eq!(e.dedup_key, "wh-1");
    assert_eq!(e.title, "Test Incident 3");
    assert_eq!(e.occurred_at, "2021-06-04T13:35:29.781Z");
    assert_eq!(e.service.id.as_deref(), Some("PA2P440"));
    assert_eq!(e.service.name.as_deref(), Some("pig208"));
    assert_eq!(e.alert["entity_id"], "PFQZPSY");
    assert_eq!(e.alert["incident_number"], "9");
    assert_eq!(e.alert["message_type"], "CRITICAL");
    assert_eq!(e.alert["agent"], "PIG 208");
    assert_eq!(
        e.raw.body.as_ref(),
        fixture("pagerduty-v3-incident-triggered.json").as_slice()
    );

    let (status, _, events) =
        ingest(&relay, PD, "pagerduty-v3-incident-resolved.json", JSON, &[]).await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(e.dedup_key, "01BZYH1JJY09P9LEIST8HG2PMN");
    assert_eq!(e.alert["entity_id"], "PCPZE64");
    assert_eq!(e.alert["message_type"], "RECOVERY");
    assert_eq!(e.title, "Test Incident");

    let (status, _, events) = ingest(&relay, PD, "pagerduty-v3-ping.json", JSON, &[]).await;
    assert_eq!(status, 202);
    let e = one(events);
    assert_eq!(e.event_type, "ping");
    assert_eq!(e.title, "Hello from your friend Pagey!");
    assert_eq!(e.alert["message_type"], "INFO");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn pagerduty_unknown_types_and_batches_are_accepted() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    let (status, body) = post(
        &url(&relay, PD),
        Some(JSON),
        r#"{"event":{"id":"01X","event_type":"incident.workflow.paused","resource_type":"incident","data":{"type":"incident_workflow_instance"}}}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1);

    let (status, body) = post(
        &url(&relay, PD),
        Some(JSON),
        r#"{"messages":[{"id":"m1","type":"incident.trigger","data":{"incident":{"id":"P1","status":"triggered"}}},{"id":"m2","type":"incident.resolve","data":{"incident":{"id":"P1","status":"resolved"}}}]}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 2);

    let (status, body) = post(&url(&relay, PD), Some(JSON), r#"{"messages":[]}"#).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"], json!([]));
    let outbox = dir.path().join("outbox.jsonl");
    assert!(wait_until(Duration::from_secs(5), || read_lines(&outbox).len() == 3).await);
    let types: Vec<_> = read_lines(&outbox)
        .iter()
        .map(|l| l["event"]["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "incident.workflow.paused",
            "incident.trigger",
            "incident.resolve"
        ]
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicates_are_acknowledged_and_delivered_once() {
    let dir = tempdir();
    let receiver = Receiver::ok().await;
    let config = format!(
        "{SOURCES}[[targets]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        receiver.url("/in")
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let send = |id: &'static str| {
        client()
            .post(url(&relay, PD))
            .header("content-type", JSON)
            .header("x-webhook-id", id)
            .body(fixture("pagerduty-v3-incident-triggered.json"))
            .send()
    };
    // The answers byte for byte: the fields in this order, nothing else.
    let first = send("same").await.unwrap();
    assert_eq!(first.status(), 202);
    let first = first.text().await.unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&first).unwrap()["events"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        first,
        format!(r#"{{"status":"accepted","events":["{id}"],"duplicates":0}}"#)
    );
    let second = send("same").await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.text().await.unwrap(), r#"{"status":"duplicate"}"#);
    for _ in 0..2 {
        let (status, _) = send_fixture(&relay, SG, "statusgator-v1.form").await;
        assert_eq!(status, 200);
    }
    receiver.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 2, "each webhook delivered once");
    // The outcome is recorded after the receiver answered; give a loaded machine time for it.
    let store = relay.store();
    assert!(wait_until_async(|| async { store.stats().await.unwrap().done == 2 }).await);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.events, stats.done), (2, 2));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_in_query_or_path() {
    let dir = tempdir();
    let config = r#"
[store]
path = "{dir}/data"

[admin]
listen = "127.0.0.1:0"
[[sources]]
name = "sg"
kind = "statusgator"
path = "/sg"
token = "s3cret-Token_1-long-enough"
[[targets]]
name = "outbox"
kind = "file"
path = "{dir}/outbox.jsonl"
"#;
    let relay = spawn_relay(config, dir.path()).await;
    let body = fixture("statusgator-v2.json");
    let (ok_query, _) = post(
        &url(&relay, "/sg?token=s3cret-Token_1-long-enough&aid=x"),
        Some(JSON),
        body.clone(),
    )
    .await;
    let (ok_path, _) = post(
        &url(&relay, "/sg/s3cret-Token_1-long-enough"),
        Some(JSON),
        body.clone(),
    )
    .await;
    assert_eq!((ok_query, ok_path), (200, 200));
    for bad in [
        "/sg",
        "/sg?token=wrong",
        "/sg/wrong",
        "/sg?token=s3cret-Token_1-long-enoug",
    ] {
        let (status, err) = post(&url(&relay, bad), Some(JSON), body.clone()).await;
        assert_eq!(status, 401, "{bad}");
        assert_eq!(
            err,
            json!({"error": "missing or wrong token", "code": "unauthorized"})
        );
    }
    let outbox = dir.path().join("outbox.jsonl");
    assert!(wait_until(Duration::from_secs(5), || read_lines(&outbox).len() == 1).await);
    let line = &read_lines(&outbox)[0];
    assert_eq!(
        line["event"]["query"],
        json!({"aid": "x"}),
        "the token is never stored"
    );
    assert_eq!(
        relay.store().stats().await.unwrap().events,
        1,
        "same body twice is one event"
    );
    relay.shutdown().await.unwrap();
}

/// What, where, Content-Type, body, then the expected status, code and message start.
type BadCase = (
    &'static str,
    String,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn bad_requests_get_a_named_4xx_and_store_nothing() {
    let dir = tempdir();
    let config = format!("{SOURCES}{OUTBOX}\n[server]\nmax_body_bytes = 4096\n");
    let relay = spawn_relay(&config, dir.path()).await;
    let sg = url(&relay, SG);
    let pd = url(&relay, PD);
    let cases: Vec<BadCase> = vec![
        (
            "malformed JSON",
            sg.clone(),
            Some(JSON),
            b"{\"type\": \"StatusChange\",".to_vec(),
            400,
            "malformed_json",
            "malformed JSON: EOF while parsing",
        ),
        (
            "malformed PD JSON",
            pd.clone(),
            Some(JSON),
            b"{\"event\": }".to_vec(),
            400,
            "malformed_json",
            "malformed JSON: expected value",
        ),
        (
            "bad percent escape",
            sg.clone(),
            Some(FORM),
            b"service_name=A%zz&current_status=up".to_vec(),
            400,
            "malformed_form",
            "malformed form body: bad percent escape near byte 14",
        ),
        (
            "form missing fields",
            sg.clone(),
            Some(FORM),
            b"hello=world".to_vec(),
            400,
            "unrecognized_payload",
            "form body is not a StatusGator v1 payload: missing field `service_name`",
        ),
        (
            "empty body",
            sg.clone(),
            Some(JSON),
            Vec::new(),
            400,
            "empty_body",
            "request body is empty",
        ),
        (
            "whitespace body",
            pd.clone(),
            Some(JSON),
            b"  \n".to_vec(),
            400,
            "empty_body",
            "request body is empty",
        ),
        (
            "oversized",
            sg.clone(),
            Some(JSON),
            vec![b' '; 5000],
            413,
            "payload_too_large",
            "request body is larger than the 4096-byte limit",
        ),
        (
            "invalid UTF-8",
            sg.clone(),
            Some(JSON),
            b"{\"type\":\"\xff\"}".to_vec(),
            400,
            "invalid_utf8",
            "request body is not valid UTF-8 (at byte 9)",
        ),
        (
            "deep nesting",
            pd.clone(),
            Some(JSON),
            format!("{{\"event\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            413,
            "payload_too_large",
            "request body is larger",
        ),
        (
            "wrong content type",
            sg.clone(),
            Some("application/xml"),
            b"<a/>".to_vec(),
            415,
            "unsupported_media_type",
            "unsupported Content-Type \"application/xml\"",
        ),
        (
            "not a PD webhook",
            pd.clone(),
            Some(JSON),
            b"{\"hello\":1}".to_vec(),
            400,
            "unrecognized_payload",
            "JSON body is not a PagerDuty webhook",
        ),
        (
            "not an SG payload",
            sg.clone(),
            Some(JSON),
            b"{\"hello\":1}".to_vec(),
            400,
            "unrecognized_payload",
            "JSON body is not a StatusGator v2 or v3 payload",
        ),
        (
            "JSON array",
            pd.clone(),
            Some(JSON),
            b"[]".to_vec(),
            400,
            "unrecognized_payload",
            "a PagerDuty body must be a JSON object",
        ),
        (
            "unknown path",
            url(&relay, "/com.nope/v1"),
            Some(JSON),
            b"{}".to_vec(),
            404,
            "not_found",
            "no source is configured at this path",
        ),
    ];
    for (what, to, ct, body, want_status, want_code, want_msg) in cases {
        let (status, err) = post(&to, ct, body).await;
        assert_eq!(status, want_status, "{what}: {err}");
        assert_eq!(err["code"], want_code, "{what}: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(want_msg),
            "{what}: {msg:?} should start with {want_msg:?}"
        );
    }
    // Nesting deeper than the parser allows, within the size limit.
    let deep = format!("{{\"event\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
    let (status, err) = post(&pd, Some(JSON), deep).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("recursion limit exceeded"),
        "{err}"
    );

    let resp = client().get(&sg).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    let stats = relay.store().stats().await.unwrap();
    assert_eq!(
        (stats.events, stats.pending, stats.done, stats.dead),
        (0, 0, 0, 0),
        "nothing stored"
    );
    assert!(!dir.path().join("outbox.jsonl").exists());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_that_cannot_write_answers_503_never_4xx() {
    let dir = tempdir();
    let relay = relay_with_outbox(dir.path()).await;
    relay.store().close().await.unwrap();
    for (path, file) in [(SG, "statusgator-v1.form"), (PD, "pagerduty-v3-ping.json")] {
        let ct = if file.ends_with(".form") { FORM } else { JSON };
        let resp = client()
            .post(url(&relay, path))
            .header("content-type", ct)
            .body(fixture(file))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{file}");
        assert_eq!(resp.headers()["retry-after"], "5");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "the event could not be stored; retry later", "code": "store_unavailable"})
        );
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn pagerduty_signatures_are_verified_before_anything_is_stored() {
    let sig = String::from_utf8(fixture("pagerduty-v3-incident-triggered.sig")).unwrap();
    let mut lines = sig.lines();
    let (secret, header) = (
        lines.next().unwrap().to_owned(),
        lines.next().unwrap().to_owned(),
    );
    let body = fixture("pagerduty-v3-incident-triggered.json");
    let send = |relay: &hookrelay::Relay, body: Vec<u8>, header: Option<String>| {
        let mut req = client()
            .post(url(relay, PD))
            .header("content-type", JSON)
            .body(body);
        if let Some(h) = header {
            req = req.header("x-pagerduty-signature", h);
        }
        req.send()
    };
    let signed = |secrets: &str| {
        format!("{SOURCES}{OUTBOX}").replace(
            "path = \"/com.pagerduty/v1\"",
            &format!("path = \"/com.pagerduty/v1\"\nsecrets = {secrets}"),
        )
    };

    let dir = tempdir();
    let relay = spawn_relay(&signed(&format!("[{secret:?}]")), dir.path()).await;
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'3').unwrap();
    tampered[at] = b'4';
    let rejected = [
        (
            tampered,
            Some(header.clone()),
            403,
            "signature_mismatch",
            "invalid webhook signature",
        ),
        (
            body.clone(),
            None,
            400,
            "signature_malformed",
            "X-PagerDuty-Signature header is missing or malformed",
        ),
        (
            body.clone(),
            Some("v1=nothex".into()),
            400,
            "signature_malformed",
            "X-PagerDuty-Signature header is missing or malformed",
        ),
    ];
    for (b, h, status, code, message) in rejected {
        let resp = send(&relay, b, h).await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap(),
            json!({"error": message, "code": code})
        );
    }
    assert_eq!(
        relay.store().stats().await.unwrap().events,
        0,
        "nothing stored for a rejected request"
    );
    let ok = send(&relay, body.clone(), Some(header.clone()))
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    relay.shutdown().await.unwrap();

    // A wrong secret rejects the published signature.
    let dir = tempdir();
    let relay = spawn_relay(&signed("[\"whsec_someone_else\"]"), dir.path()).await;
    assert_eq!(
        send(&relay, body.clone(), Some(header.clone()))
            .await
            .unwrap()
            .status(),
        403
    );
    relay.shutdown().await.unwrap();

    // Rotation: PagerDuty signs with old and new; either configured secret verifies.
    let other = "v1=".to_owned() + &"ab".repeat(32);
    for secrets in [
        format!("[{secret:?}, \"whsec_new\"]"),
        format!("[\"whsec_new\", {secret:?}]"),
    ] {
        let dir = tempdir();
        let relay = spawn_relay(&signed(&secrets), dir.path()).await;
        let rotated = format!("{other},{header}");
        assert_eq!(
            send(&relay, body.clone(), Some(rotated))
                .await
                .unwrap()
                .status(),
            202,
            "{secrets}"
        );
        relay.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_limited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let config = format!("{SOURCES}{OUTBOX}\n[server]\nheader_timeout = \"300ms\"\nbody_timeout = \"300ms\"\nmax_connections = 2\n");
    let relay = spawn_relay(&config, dir.path()).await;
    let addr = relay.local_addr();

    // Headers, then half a body, then nothing: 408 when the body timeout passes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /com.statusgator/v1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(s);

    // Half a request line, then nothing: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /com.statusg").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the relay closes a connection that never finishes its headers"
    );
    drop(s);

    // Two idle connections fill the limit; a third client is served once one goes away.
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sg = url(&relay, SG);
    let third =
        tokio::spawn(async move { post(&sg, Some(FORM), fixture("statusgator-v1.form")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!third.is_finished(), "served beyond the connection limit");
    drop(a);
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served after a slot freed")
        .unwrap();
    assert_eq!(status, 200);
    drop(b);
    assert_eq!(
        relay.store().stats().await.unwrap().events,
        1,
        "nothing stored for the cut-off requests"
    );
    relay.shutdown().await.unwrap();
}
