//! Speaking each destination's language: Snowplow's adapters, StatusHub's keyed hook, rules,
//! with local receivers standing in for the collector and StatusHub.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hookrelay::store::{DeliveryState, Store};
use serde_json::{json, Value};

const SG: &str = "/com.statusgator/v1";
const PD: &str = "/com.pagerduty/v1";

/// Decodes a form body the way Snowplow's enrich does (`URLEncodedUtils` over
/// `URI.create("http://localhost/?" + body)`): `&` and `;` separate pairs, `+` is a space, and
/// characters `URI.create` rejects, or a `#` that would cut the body, must not appear raw.
fn snowplow_decode(body: &str) -> Vec<(String, String)> {
    for c in [' ', '"', '<', '>', '\\', '^', '`', '{', '|', '}', '#'] {
        assert!(!body.contains(c), "raw {c:?} in {body}");
    }
    body.split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("every field has a value");
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                let mut out = Vec::new();
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' {
                        out.push(
                            u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16)
                                .unwrap(),
                        );
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                String::from_utf8(out).unwrap()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// Snowplow's camel-casing of form keys (`service_name` → `serviceName`).
fn camel(k: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in k.chars() {
        if c == '_' || c == '-' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn iglu(name: &str) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_slice(&fixture(&format!("iglu/{name}"))).unwrap();
    // Iglu's self-describing meta-schema is draft 4 plus `self`; validate as draft 4.
    let obj = schema.as_object_mut().unwrap();
    obj.remove("$schema");
    obj.remove("self");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance}\nfails the schema: {errors:#?}"
    );
}

fn snowplow_target(collector: &Receiver) -> String {
    format!(
        "\n[[targets]]\nname = \"snowplow\"\nkind = \"snowplow\"\ncollector = \"http://{}\"\napp_id = \"relay\"\n",
        collector.addr
    )
}

#[tokio::test]
async fn snowplow_gets_the_v1_form_for_every_statusgator_version() {
    let dir = tempdir();
    let collector = Receiver::scripted(Arc::new(|_, _| (200, vec![], "ok".into()))).await;
    let relay = spawn_relay(
        &format!("{SOURCES}{}", snowplow_target(&collector)),
        dir.path(),
    )
    .await;
    let schema = iglu("com.statusgator.status_change.1-0-0.json");

    let sends = [
        ("?p=web&aid=board-7", "statusgator-v1.form"),
        ("", "statusgator-v1-aws.form"),
        ("", "statusgator-v2.json"),
        ("", "statusgator-v3-status-change.json"),
        ("", "statusgator-v3-early-warning.json"),
    ];
    let mut ids = Vec::new();
    for (query, file) in sends {
        let (status, body) = send_fixture(&relay, &format!("{SG}{query}"), file).await;
        assert_eq!(status, 200, "{file}: {body}");
        ids.push(body["events"][0].as_str().unwrap().to_owned());
    }
    let got = collector.wait_for(4, Duration::from_secs(5)).await;
    // Each source key (monitor) has its own order; sort by the event id the target passes on.
    let by_eid = |id: &str| {
        got.iter()
            .find(|r| r.uri.contains(&format!("eid={id}")))
            .unwrap_or_else(|| panic!("no request for {id}"))
    };

    let v1 = by_eid(&ids[0]);
    assert_eq!(v1.method, "POST");
    assert_eq!(
        v1.uri,
        format!("/com.statusgator/v1?p=web&aid=board-7&eid={}", ids[0]),
        "the ingest's p and aid win"
    );
    assert_eq!(
        v1.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        v1.body,
        fixture("statusgator-v1.form"),
        "a v1 body passes through byte for byte"
    );

    let aws = by_eid(&ids[1]);
    assert_eq!(
        aws.uri,
        format!("/com.statusgator/v1?p=srv&aid=relay&eid={}", ids[1]),
        "else the target's own"
    );
    assert_eq!(aws.body, fixture("statusgator-v1-aws.form"));

    let v2 = by_eid(&ids[2]);
    assert_eq!(
        v2.text(),
        "service_name=Heroku&favicon_url=https%3A%2F%2Ffavicons.statusgator.com%2Fheroku.ico&status_page_url=https%3A%2F%2Fstatus.heroku.com&home_page_url=https%3A%2F%2Fwww.heroku.com&current_status=warn&last_status=up&occurred_at=2022-01-20T10%3A52%3A30-04%3A00"
    );
    let v3 = by_eid(&ids[3]);
    assert_eq!(
        v3.text(),
        "service_name=OpenAI&favicon_url=https%3A%2F%2Ffavicons.statusgator.com%2Fopenai.png&status_page_url=https%3A%2F%2Fstatus.openai.com&home_page_url=https%3A%2F%2Fopenai.com&current_status=up&last_status=down&occurred_at=2025-07-17T02%3A20%3A45Z"
    );
    for r in [v1, aws, v2, v3] {
        let fields = snowplow_decode(&r.text());
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "service_name",
                "favicon_url",
                "status_page_url",
                "home_page_url",
                "current_status",
                "last_status",
                "occurred_at"
            ]
        );
        let data: serde_json::Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (camel(&k), Value::String(v)))
            .collect();
        assert_valid(&schema, &Value::Object(data));
    }
    assert_eq!(snowplow_decode(&aws.text())[0].1, "Amazon Web Services");
    assert_eq!(
        snowplow_decode(&v1.text())[6].1,
        "2016-05-19T09:26:31+00:00"
    );

    // The early warning is skipped with its reason, and nothing was sent for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(collector.count(), 4);
    let skipped = relay
        .store()
        .deliveries_of(uuid::Uuid::parse_str(&ids[4]).unwrap())
        .await
        .unwrap();
    assert_eq!(skipped[0].state, DeliveryState::Skipped);
    assert!(
        skipped[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("an early warning is not a status change"),
        "{:?}",
        skipped[0]
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn snowplow_gets_one_schema_valid_v1_message_per_pagerduty_event() {
    let dir = tempdir();
    let collector = Receiver::ok().await;
    let relay = spawn_relay(
        &format!("{SOURCES}{}", snowplow_target(&collector)),
        dir.path(),
    )
    .await;
    let schema = iglu("com.pagerduty.incident.1-0-0.json");

    let files = [
        "pagerduty-v3-incident-triggered.json",
        "pagerduty-v3-incident-resolved.json",
        "pagerduty-v1-trigger.json",
        "pagerduty-v1-resolve.json",
        "pagerduty-v2-trigger.json",
        "pagerduty-v3-ping.json",
    ];
    let mut ids = Vec::new();
    for file in files {
        let (status, body) = send_fixture(&relay, PD, file).await;
        assert_eq!(status, 202, "{file}: {body}");
        ids.push(body["events"][0].as_str().unwrap().to_owned());
    }
    let got = collector.wait_for(5, Duration::from_secs(5)).await;
    let by_eid = |id: &str| {
        got.iter()
            .find(|r| r.uri.contains(&format!("eid={id}")))
            .unwrap()
            .clone()
    };
    for r in &got {
        assert!(
            r.uri.starts_with("/com.pagerduty/v1?p=srv&aid=relay&eid="),
            "{}",
            r.uri
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        let messages = body["messages"].as_array().expect("a messages array");
        assert_eq!(messages.len(), 1, "one message per request");
        assert_valid(&schema, &messages[0]);
    }
    // The V3 capture, byte for byte as the contract derives it.
    assert_eq!(
        by_eid(&ids[0]).text(),
        r#"{"messages":[{"type":"incident.trigger","id":"01BZYIL05THJDFF2Y08X9SVMTU","created_on":"2021-06-04T13:35:29.781Z","data":{"incident":{"id":"PFQZPSY","incident_number":9,"created_on":"2021-06-04T13:35:29.781Z","status":"triggered","html_url":"https://pig208.pagerduty.com/incidents/PFQZPSY","service":{"id":"PA2P440","name":"pig208","html_url":"https://pig208.pagerduty.com/services/PA2P440","deleted_at":null},"escalation_policy":{"id":"PY82TC6","name":"Default","deleted_at":null},"trigger_summary_data":{"subject":"Test Incident 3"},"last_status_change_on":"2021-06-04T13:35:29.781Z","last_status_change_by":{"id":"PJ0LVEB","name":"PIG 208","html_url":"https://pig208.pagerduty.com/users/PJ0LVEB"},"assigned_to":[{"at":"2021-06-04T13:35:29.781Z","object":{"id":"PJ0LVEB","name":"PIG 208","html_url":"https://pig208.pagerduty.com/users/PJ0LVEB","type":"user"}}]}}}]}"#
    );
    let resolved = by_eid(&ids[1]).json();
    assert_eq!(resolved["messages"][0]["type"], "incident.resolve");
    assert_eq!(
        resolved["messages"][0]["data"]["incident"]["assigned_to"],
        json!([])
    );
    // The documentation's V1 example fails the schema as sent by PagerDuty; the target strips it.
    let v1 = by_eid(&ids[2]).json();
    let inc = &v1["messages"][0]["data"]["incident"];
    assert!(inc.get("urgency").is_none() && inc["service"].get("description").is_none());
    assert_eq!(inc["incident_number"], 2126);
    // Snowplow's own end-to-end fixture passes through with the same content.
    let expected: Value = serde_json::from_slice(&fixture("pagerduty-v1-resolve.json")).unwrap();
    assert_eq!(by_eid(&ids[3]).json(), expected);
    let v2 = by_eid(&ids[4]).json();
    assert_eq!(v2["messages"][0]["type"], "incident.trigger");
    assert_eq!(
        v2["messages"][0]["data"]["incident"]["trigger_summary_data"],
        json!({"subject": "My new incident"})
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(collector.count(), 5, "the ping has no V1 equivalent");
    let ping = relay
        .store()
        .deliveries_of(uuid::Uuid::parse_str(&ids[5]).unwrap())
        .await
        .unwrap();
    assert_eq!(ping[0].state, DeliveryState::Skipped);
    assert!(
        ping[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("\"ping\" has no V1 equivalent"),
        "{:?}",
        ping[0]
    );
    relay.shutdown().await.unwrap();
}

/// A PagerDuty V3 event for incident `id` with `event_type`, on PagerDuty service `service`.
fn pd_v3(id: &str, event_type: &str, status: &str, service: &str) -> String {
    let mut v: Value =
        serde_json::from_slice(&fixture("pagerduty-v3-incident-triggered.json")).unwrap();
    v["event"]["id"] = json!(format!("{id}-{event_type}"));
    v["event"]["event_type"] = json!(event_type);
    v["event"]["data"]["id"] = json!(id);
    v["event"]["data"]["status"] = json!(status);
    v["event"]["data"]["service"]["summary"] = json!(service);
    v.to_string()
}

const GUIDE_RULES: &str = r#"
[[rules]]
name = "name-the-tool"
field = "service_name"
wildcard = "cloudwatch-*"
set = { monitoring_tool = "Cloudwatch" }

[[rules]]
name = "statushub-guide"
field = "monitoring_tool"
wildcard = "Cloudwatch"
set = { StatusHubfield = "9cc47ae1670bf9c1" }
"#;

#[tokio::test]
async fn the_statushub_guide_example_works_as_written() {
    let dir = tempdir();
    let hub = Receiver::ok().await;
    let target = format!(
        "\n[[targets]]\nname = \"statushub\"\nkind = \"statushub\"\nurl = \"{}\"\n",
        hub.url("/hooks/victor_ops?token=${{ALERT.StatusHubfield}}")
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}{GUIDE_RULES}"), dir.path()).await;
    let (status, _) = post(
        &url(&relay, PD),
        Some("application/json"),
        pd_v3("P1", "incident.triggered", "triggered", "cloudwatch-prod"),
    )
    .await;
    assert_eq!(status, 202);
    let (status, unkeyed) = post(
        &url(&relay, PD),
        Some("application/json"),
        pd_v3("P2", "incident.triggered", "triggered", "pig208"),
    )
    .await;
    assert_eq!(status, 202);

    let got = hub.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].uri, "/hooks/victor_ops?token=9cc47ae1670bf9c1");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[0].json();
    assert_eq!(body["ALERT.StatusHubfield"], "9cc47ae1670bf9c1");
    assert_eq!(body["ALERT.monitoring_tool"], "Cloudwatch");
    assert_eq!(body["ALERT.entity_display_name"], "Test Incident 3");

    let id = uuid::Uuid::parse_str(unkeyed["events"][0].as_str().unwrap()).unwrap();
    assert!(
        wait_until_async(|| async {
            relay.store().deliveries_of(id).await.unwrap()[0].state == DeliveryState::Skipped
        })
        .await
    );
    let d = &relay.store().deliveries_of(id).await.unwrap()[0];
    assert_eq!(
        d.last_error.as_deref(),
        Some("the URL needs ${{ALERT.StatusHubfield}}, which this event does not have")
    );
    assert_eq!(
        relay.store().attempts(d.seq).await.unwrap().len(),
        1,
        "recorded once, never retried"
    );
    assert_eq!(hub.count(), 1, "an alert no rule keyed is not sent");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn trigger_acknowledge_and_resolve_reach_statushub_in_order() {
    let dir = tempdir();
    let hub = Receiver::statuses(&[503]).await;
    let target = format!(
        "\n[[targets]]\nname = \"statushub\"\nkind = \"statushub\"\nurl = \"{}\"\nretry = {{ initial_delay = \"200ms\", jitter = 0.0 }}\n",
        hub.url("/hooks/victor_ops?token=${{ALERT.StatusHubfield}}")
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}{GUIDE_RULES}"), dir.path()).await;
    for (t, s) in [
        ("incident.triggered", "triggered"),
        ("incident.acknowledged", "acknowledged"),
        ("incident.resolved", "resolved"),
    ] {
        let (status, _) = post(
            &url(&relay, PD),
            Some("application/json"),
            pd_v3("P9", t, s, "cloudwatch-db"),
        )
        .await;
        assert_eq!(status, 202);
    }
    let got = hub.wait_for(4, Duration::from_secs(5)).await;
    let seen: Vec<(u16, String, String)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            (
                r.status,
                b["ALERT.message_type"].as_str().unwrap().to_owned(),
                b["STATE.CURRENT_ALERT_PHASE"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u16, String, String)> = [
        (503, "CRITICAL", "UNACKED"),
        (200, "CRITICAL", "UNACKED"),
        (200, "ACKNOWLEDGEMENT", "ACKED"),
        (200, "RECOVERY", "RESOLVED"),
    ]
    .iter()
    .map(|(s, m, p)| (*s, m.to_string(), p.to_string()))
    .collect();
    assert_eq!(
        seen, want,
        "the failed trigger is retried before the acknowledgement goes"
    );
    assert_eq!(got[3].json()["STATE.CURRENT_STATE"], "OK");
    relay.shutdown().await.unwrap();
}

const FAN_OUT_RULES: &str = r#"
[[rules]]
name = "openai-page"
field = "service_slug"
wildcard = "openai"
set = { StatusHubfield = "d017698cd8a72c54" }

[[rules]]
name = "pig-page"
field = "service_name"
wildcard = "pig*"
set = { StatusHubfield = "9cc47ae1670bf9c1" }
"#;

async fn fan_out(
    file: &str,
    path: &str,
) -> (
    Vec<Recorded>,
    Vec<Recorded>,
    Vec<Recorded>,
    hookrelay::Event,
    u64,
    tempfile::TempDir,
) {
    let dir = tempdir();
    let collector = Receiver::ok().await;
    let hub = Receiver::ok().await;
    let chat = Receiver::ok().await;
    let targets = format!(
        "{}\n[[targets]]\nname = \"statushub\"\nkind = \"statushub\"\nurl = \"{}\"\nfire_on = [\"triggered\", \"acknowledged\", \"resolved\", \"updated\", \"no_incident\"]\n\n[[targets]]\nname = \"chat\"\nkind = \"webhook\"\nurl = \"{}\"\nheaders = {{ \"Content-Type\" = \"application/json\" }}\ntemplate = \"{}/templates/chat.json.hbs\"\n",
        snowplow_target(&collector),
        hub.url("/hooks/victor_ops?token=${{ALERT.StatusHubfield}}"),
        chat.url("/chat/${{ALERT.monitoring_tool}}"),
        env!("CARGO_MANIFEST_DIR"),
    );
    let relay = spawn_relay(&format!("{SOURCES}{targets}{FAN_OUT_RULES}"), dir.path()).await;
    let (status, body) = send_fixture(&relay, path, file).await;
    assert!(status == 200 || status == 202, "{body}");
    let id = uuid::Uuid::parse_str(body["events"][0].as_str().unwrap()).unwrap();
    let c = collector.wait_for(1, Duration::from_secs(5)).await;
    let h = hub.wait_for(1, Duration::from_secs(5)).await;
    let t = chat.wait_for(1, Duration::from_secs(5)).await;
    let event = relay.store().event(id).await.unwrap().unwrap();
    let hub_target = relay
        .store()
        .target_ids(&["statushub".into()])
        .await
        .unwrap()[0];
    let hub_seq = relay
        .store()
        .deliveries_of(id)
        .await
        .unwrap()
        .iter()
        .find(|d| d.target == hub_target)
        .unwrap()
        .seq;
    relay.shutdown().await.unwrap();
    (c, h, t, event, hub_seq, dir)
}

/// The incident a StatusHub body states, as a test expects it: numbered by its delivery,
/// opened by this one alert.
struct Expected<'a> {
    seq: u64,
    phase: &'a str,
    state: &'a str,
    resolved_by: Option<&'a str>,
}

/// The StatusHub body for `event`, written out key by key in the capture's order
/// (`INCIDENT.*`, `ALERT.*`, `STATE.*`), as `normalize::victorops` documents it.
fn expected_statushub_body(event: &hookrelay::Event, inc: &Expected) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(&event.occurred_at)
        .unwrap()
        .timestamp_millis();
    let rcv = chrono::DateTime::parse_from_rfc3339(&event.received_at)
        .unwrap()
        .timestamp_millis();
    let a = |k: &str| json!(event.alert.get(k).cloned().unwrap_or_default());
    let tool = a("monitoring_tool");
    let n = inc.seq.to_string();
    let resolved_at = inc.resolved_by.map(|_| at);
    let mut all: Vec<(String, Value)> = [
        ("INCIDENT.INCIDENT_ID", json!(n)),
        ("INCIDENT.INCIDENT_NAME", json!(format!("#{n}"))),
        ("INCIDENT.INCIDENT_TIMESTAMP", json!(at)),
        ("INCIDENT.ENTITY_TYPE", json!("SERVICE")),
        ("INCIDENT.ENTITY_SLUG", a("service_slug")),
        ("INCIDENT.HOST", json!("")),
        ("INCIDENT.SERVICE", a("entity_display_name")),
        ("INCIDENT.CURRENT_PHASE", json!(inc.phase)),
        ("INCIDENT.ANNOTATION_COUNT", json!(0)),
        ("INCIDENT.ALERT_COUNT", json!(1)),
        ("INCIDENT.ENTITY_STATE", json!(inc.state)),
        ("INCIDENT.TEAMS_PAGED.0", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.IS_DISPLAYABLE", json!(false)),
        ("INCIDENT.POLICIES_PAGED.0.POLICY.NAME", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.POLICY.SLUG", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.TEAM.NAME", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.TEAM.SLUG", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.ACKED_BY", json!("")),
        ("INCIDENT.POLICIES_PAGED.0.ACKED_AT", json!(0)),
        ("INCIDENT.MONITOR_TYPE", tool.clone()),
        (
            "INCIDENT.MONITOR_NAME",
            event
                .alert
                .get("monitor_name")
                .map_or(tool.clone(), |m| json!(m)),
        ),
        ("INCIDENT.USER", json!(inc.resolved_by.unwrap_or(""))),
        ("INCIDENT.FIRST_ALERT_UUID", json!(event.id)),
        ("INCIDENT.LATEST_ALERT_UUID", json!(event.id)),
        ("INCIDENT.TAGS.0", json!(format!("incident{n}"))),
        ("INCIDENT.TAGS.1", json!("routingdefault")),
        ("INCIDENT.TAGS.2", json!("typesystemmessagenotify")),
        ("INCIDENT.TAGS.3", json!("typeincidentnotify")),
        ("INCIDENT.SEQUENCING.SEQUENCE", json!(inc.seq)),
        ("INCIDENT.SEQUENCING.SERVICE_TIME", json!(at - at % 1000)),
        ("INCIDENT.ROOM_ID", json!("*")),
        ("INCIDENT.IS_MULTI_RESPONDER", json!(false)),
        ("INCIDENT.IS_MUTED", json!(false)),
        ("INCIDENT.ENTITY_DISPLAY_NAME", a("entity_display_name")),
        ("INCIDENT.ENTITY_ID", a("entity_id")),
        ("INCIDENT.ACK_DATA.ACKS_EXPECTED", json!(0)),
        ("INCIDENT.ACK_DATA.ACKS_RECEIVED", json!(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    all.extend(
        event
            .alert
            .iter()
            .map(|(k, v)| (format!("ALERT.{k}"), json!(v))),
    );
    for (k, v) in [
        ("VO_ORGANIZATION_ID", json!(event.source)),
        ("created_by", tool.clone()),
        ("VO_UUID", json!(event.id)),
        ("VO_ALERT_RCV_TIME", json!(rcv.to_string())),
        ("alert_type", a("message_type")),
        ("monitor_name", tool.clone()),
        ("VO_MONITOR_TYPE", json!("")),
    ] {
        if !event.alert.contains_key(k) {
            all.push((format!("ALERT.{k}"), v));
        }
    }
    all.extend(
        [
            ("STATE.ENTITY_ID", a("entity_id")),
            ("STATE.ENTITY_SLUG", a("service_slug")),
            ("STATE.HOST", json!("")),
            ("STATE.SERVICE", a("entity_display_name")),
            ("STATE.LAST_UUID", json!(event.id)),
            ("STATE.CURRENT_ALERT_PHASE", json!(inc.phase)),
            ("STATE.ACK_MSG", json!("")),
            ("STATE.ACK_USER", json!("")),
            ("STATE.ACK_TIMESTAMP", json!(0)),
            ("STATE.CURRENT_STATE", json!(inc.state)),
            ("STATE.STATE_START_TIME", json!(at)),
            ("STATE.ALERT_COUNT", json!(1)),
            ("STATE.LAST_TIMESTAMP", json!(at)),
            ("STATE.INFO_URL", a("incident_url")),
            ("STATE.NOTIFICATIONTYPE", json!("")),
            ("STATE.VO_ALERT_TYPE", json!("SERVICE")),
            ("STATE.INCIDENT_NAME", json!(n)),
            ("STATE.INCIDENT_TIMESTAMP", json!(at)),
            ("STATE.MONITOR_TYPE", tool),
            ("STATE.TEAMS_PAGED.0", json!("")),
            ("STATE.USERS_PAGED.0", json!("")),
            ("STATE.ACKED_BY", Value::Null),
            ("STATE.ACKED_AT", Value::Null),
            ("STATE.RESOLVED_BY", json!(inc.resolved_by)),
            ("STATE.RESOLVED_AT", json!(resolved_at)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut out = String::from("{");
    for (i, (k, v)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}:{}", json!(k), v));
    }
    out.push('}');
    out
}

#[tokio::test]
async fn a_statusgator_v3_event_fans_out_to_three_different_bodies() {
    let (collector, hub, chat, event, hub_seq, _dir) =
        fan_out("statusgator-v3-status-change.json", SG).await;
    assert_eq!(
        collector[0].text(),
        "service_name=OpenAI&favicon_url=https%3A%2F%2Ffavicons.statusgator.com%2Fopenai.png&status_page_url=https%3A%2F%2Fstatus.openai.com&home_page_url=https%3A%2F%2Fopenai.com&current_status=up&last_status=down&occurred_at=2025-07-17T02%3A20%3A45Z"
    );
    assert_eq!(hub[0].uri, "/hooks/victor_ops?token=d017698cd8a72c54");
    // An `up` with no open incident changes none: sent only because this target's fire_on
    // has every change, as the one-alert incident the event describes.
    assert_eq!(event.alert["StatusHubfield"], "d017698cd8a72c54");
    let expected = Expected {
        seq: hub_seq,
        phase: "RESOLVED",
        state: "OK",
        resolved_by: Some("StatusGator"),
    };
    assert_eq!(hub[0].text(), expected_statushub_body(&event, &expected));
    assert_eq!(chat[0].uri, "/chat/StatusGator");
    assert_eq!(
        chat[0].text(),
        format!(
            "{{\"text\": \"[RECOVERY] OpenAI is up\", \"details\": \"Elevated Error Rate on ChatGPT\\n\\nWe have identified that users are experiencing elevated errors for the impacted services. We are working on implementing a mitigation.\", \"event_id\": \"{}\"}}\n",
            event.id
        )
    );
}

#[tokio::test]
async fn a_pagerduty_v3_event_fans_out_to_three_different_bodies() {
    let (collector, hub, chat, event, hub_seq, _dir) =
        fan_out("pagerduty-v3-incident-triggered.json", PD).await;
    assert_eq!(
        collector[0].text(),
        r#"{"messages":[{"type":"incident.trigger","id":"01BZYIL05THJDFF2Y08X9SVMTU","created_on":"2021-06-04T13:35:29.781Z","data":{"incident":{"id":"PFQZPSY","incident_number":9,"created_on":"2021-06-04T13:35:29.781Z","status":"triggered","html_url":"https://pig208.pagerduty.com/incidents/PFQZPSY","service":{"id":"PA2P440","name":"pig208","html_url":"https://pig208.pagerduty.com/services/PA2P440","deleted_at":null},"escalation_policy":{"id":"PY82TC6","name":"Default","deleted_at":null},"trigger_summary_data":{"subject":"Test Incident 3"},"last_status_change_on":"2021-06-04T13:35:29.781Z","last_status_change_by":{"id":"PJ0LVEB","name":"PIG 208","html_url":"https://pig208.pagerduty.com/users/PJ0LVEB"},"assigned_to":[{"at":"2021-06-04T13:35:29.781Z","object":{"id":"PJ0LVEB","name":"PIG 208","html_url":"https://pig208.pagerduty.com/users/PJ0LVEB","type":"user"}}]}}}]}"#
    );
    assert_eq!(hub[0].uri, "/hooks/victor_ops?token=9cc47ae1670bf9c1");
    let expected = Expected {
        seq: hub_seq,
        phase: "UNACKED",
        state: "CRITICAL",
        resolved_by: None,
    };
    assert_eq!(hub[0].text(), expected_statushub_body(&event, &expected));
    assert_eq!(chat[0].uri, "/chat/PagerDuty");
    assert_eq!(
        chat[0].text(),
        format!("{{\"text\": \"[CRITICAL] Test Incident 3\", \"details\": \"Test Incident 3\", \"event_id\": \"{}\"}}\n", event.id)
    );
}

#[tokio::test]
async fn rules_route_to_targets_that_receive_only_routed_events_and_filters_apply() {
    let dir = tempdir();
    let pager = Receiver::ok().await;
    let quiet = Receiver::ok().await;
    let config = format!(
        r#"{SOURCES}
[[targets]]
name = "pager"
kind = "webhook"
url = "{}"
receive = "routed"

[[targets]]
name = "quiet"
kind = "webhook"
url = "{}"
filter = [{{ field = "message_type", wildcard = "CRITICAL" }}]

[[rules]]
name = "page-on-down"
field = "status"
wildcard = "down"
route = ["pager"]
"#,
        pager.url("/p"),
        quiet.url("/q")
    );
    let relay = spawn_relay(&config, dir.path()).await;
    for (monitor, status) in [("m1", "down"), ("m2", "up"), ("m3", "warn")] {
        let body = json!({"type": "StatusChange", "monitor": {"id": monitor}, "status": status, "recorded_at": "2025-01-01T00:00:00Z"});
        let (code, _) = post(&url(&relay, SG), Some("application/json"), body.to_string()).await;
        assert_eq!(code, 200);
    }
    let p = pager.wait_for(1, Duration::from_secs(5)).await;
    let q = quiet.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((pager.count(), quiet.count()), (1, 1));
    assert_eq!(p[0].json()["alert"]["entity_id"], "m1");
    assert_eq!(
        q[0].json()["alert"]["entity_id"],
        "m1",
        "only CRITICAL passes the filter"
    );
    let stats = relay.store().stats().await.unwrap();
    assert_eq!(
        (stats.events, stats.done, stats.pending),
        (3, 2, 0),
        "no delivery is made for targets that do not take the event"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_statushub_key_never_appears_in_recorded_errors() {
    let dir = tempdir();
    let port = free_port();
    let target = format!(
        "\n[[targets]]\nname = \"statushub\"\nkind = \"statushub\"\nurl = \"http://127.0.0.1:{port}/hooks/victor_ops?token=${{{{ALERT.StatusHubfield}}}}\"\nretry = {{ max_retries = 0 }}\n"
    );
    let relay = spawn_relay(&format!("{SOURCES}{target}{GUIDE_RULES}"), dir.path()).await;
    let (status, body) = post(
        &url(&relay, PD),
        Some("application/json"),
        pd_v3("P1", "incident.triggered", "triggered", "cloudwatch-x"),
    )
    .await;
    assert_eq!(status, 202);
    let id = uuid::Uuid::parse_str(body["events"][0].as_str().unwrap()).unwrap();
    assert!(
        wait_until_async(|| async {
            relay.store().deliveries_of(id).await.unwrap()[0].state == DeliveryState::Dead
        })
        .await
    );
    let d = &relay.store().deliveries_of(id).await.unwrap()[0];
    let error = d.last_error.as_deref().unwrap();
    assert!(error.starts_with("connection failed"), "{error}");
    assert!(
        !error.contains("9cc47ae1670bf9c1"),
        "the key leaked into {error}"
    );
    relay.shutdown().await.unwrap();
}
