//! The `statushub` target fires like VictorOps' Any-Incident webhook: only when an entity's
//! incident is opened, acknowledged or resolved, decided at delivery time from an incident
//! record the store keeps per (target, entity), durable across restarts and shared by
//! instances on PostgreSQL. Real relays on port 0, real local receivers standing in for
//! StatusHub.

mod common;

use std::time::Duration;

use common::*;
use hookrelay::store::{DeliveryState, Store};
use hookrelay::Relay;
use serde_json::{json, Value};

const PD: &str = "/com.pagerduty/v1";

const RULES: &str = r#"
[[rules]]
name = "statushub-key"
field = "service_name"
wildcard = "cloudwatch-*"
set = { StatusHubfield = "9cc47ae1670bf9c1" }
"#;

fn statushub(name: &str, hub: &Receiver, extra: &str) -> String {
    format!(
        "\n[[targets]]\nname = \"{name}\"\nkind = \"statushub\"\nurl = \"{}\"\nretry = {{ initial_delay = \"200ms\", jitter = 0.0 }}\n{extra}\n",
        hub.url("/hooks/victor_ops?token=${{ALERT.StatusHubfield}}")
    )
}

/// A PagerDuty V3 event `n` of `event_type` for incident `incident` (a keyed service).
fn pd(incident: &str, n: usize, event_type: &str, status: &str) -> String {
    let mut v: Value =
        serde_json::from_slice(&fixture("pagerduty-v3-incident-triggered.json")).unwrap();
    v["event"]["id"] = json!(format!("{incident}-{n}"));
    v["event"]["event_type"] = json!(event_type);
    v["event"]["data"]["id"] = json!(incident);
    v["event"]["data"]["status"] = json!(status);
    v["event"]["data"]["service"]["summary"] = json!("cloudwatch-db");
    v.to_string()
}

/// Posts events one after another (each acknowledged before the next, as PagerDuty sends
/// them); the stored event ids.
async fn send(relay: &Relay, events: &[String]) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for body in events {
        let (status, answer) = post(&url(relay, PD), Some("application/json"), body.clone()).await;
        assert_eq!(status, 202, "{answer}");
        ids.push(uuid::Uuid::parse_str(answer["events"][0].as_str().unwrap()).unwrap());
    }
    ids
}

/// Waits until no delivery is pending.
async fn settle(relay: &Relay) {
    assert!(
        wait_until_async(|| async { relay.store().stats().await.unwrap().pending == 0 }).await,
        "deliveries did not finish"
    );
}

/// What became of an event's delivery to `target`: its state and recorded reason.
async fn outcome(relay: &Relay, id: uuid::Uuid, target: &str) -> (DeliveryState, String) {
    let t = relay.store().target_ids(&[target.into()]).await.unwrap()[0];
    let d = relay
        .store()
        .deliveries_of(id)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.target == t)
        .unwrap();
    (d.state, d.last_error.unwrap_or_default())
}

fn phases(got: &[Recorded]) -> Vec<(String, String, u64)> {
    got.iter()
        .map(|r| {
            let b = r.json();
            (
                b["ALERT.message_type"].as_str().unwrap().to_owned(),
                b["STATE.CURRENT_ALERT_PHASE"].as_str().unwrap().to_owned(),
                b["STATE.ALERT_COUNT"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Guards the firing decision (`deliver::incident`, `targets::incident`): with it removed,
/// every keyed alert is posted and `hub` gets all eight; with `fire_on` ignored, `wide` gets
/// three. Also that PagerDuty's priority changes and escalations are INFO (with the old
/// status mapping they were CRITICAL repeats and the counts differ).
#[tokio::test]
async fn statushub_fires_only_when_an_entitys_incident_changes() {
    let dir = tempdir();
    let hub = Receiver::ok().await;
    let wide = Receiver::ok().await;
    let all = r#"fire_on = ["triggered", "acknowledged", "resolved", "updated", "no_incident"]"#;
    let config = format!(
        "{SOURCES}{}{}{RULES}",
        statushub("hub", &hub, ""),
        statushub("wide", &wide, all)
    );
    let relay = spawn_relay(&config, dir.path()).await;
    let ids = send(
        &relay,
        &[
            pd("P7", 1, "incident.priority_updated", "triggered"),
            pd("P7", 2, "incident.triggered", "triggered"),
            pd("P7", 3, "incident.triggered", "triggered"),
            pd("P7", 4, "incident.escalated", "triggered"),
            pd("P7", 5, "incident.acknowledged", "acknowledged"),
            pd("P7", 6, "incident.resolved", "resolved"),
            pd("P7", 7, "incident.resolved", "resolved"),
            pd("P7", 8, "incident.annotated", "resolved"),
        ],
    )
    .await;
    settle(&relay).await;
    let got = hub.requests();
    assert_eq!(
        phases(&got),
        [
            ("CRITICAL".into(), "UNACKED".into(), 1),
            ("ACKNOWLEDGEMENT".into(), "ACKED".into(), 3),
            ("RECOVERY".into(), "RESOLVED".into(), 4),
        ],
        "opened, acknowledged, resolved: nothing else"
    );
    let incident = got[0].json()["INCIDENT.INCIDENT_ID"].clone();
    assert!(got
        .iter()
        .all(|r| r.json()["INCIDENT.INCIDENT_ID"] == incident));
    assert_eq!(got[2].json()["STATE.CURRENT_STATE"], "OK");
    assert!(got[1].json()["STATE.ACKED_AT"].is_number());

    let skipped = [
        (0, "not fired: INFO never opens an incident"),
        (2, "not fired: a repeated CRITICAL while incident #"),
        (3, "not fired: INFO does not change incident #"),
        (6, "not fired: RECOVERY with no open incident"),
        (7, "not fired: INFO never opens an incident"),
    ];
    for (i, reason) in skipped {
        let (state, why) = outcome(&relay, ids[i], "hub").await;
        assert_eq!(state, DeliveryState::Skipped, "event {i}");
        assert!(why.starts_with(reason), "event {i}: {why}");
        assert!(
            why.contains("fire_on = [triggered, acknowledged, resolved]"),
            "{why}"
        );
    }
    assert_eq!(
        outcome(&relay, ids[1], "hub").await,
        (DeliveryState::Done, String::new())
    );
    assert_eq!(
        wide.count(),
        8,
        "fire_on with every change posts every alert"
    );
    relay.shutdown().await.unwrap();
}

/// Guards durability of the incident record (sled): reading no record after a restart, the
/// repeated trigger fires again and the resolve names a new incident.
#[tokio::test]
async fn the_incident_record_survives_a_restart() {
    let dir = tempdir();
    let hub = Receiver::ok().await;
    let config = format!("{SOURCES}{}{RULES}", statushub("hub", &hub, ""));
    let relay = spawn_relay(&config, dir.path()).await;
    send(&relay, &[pd("P8", 1, "incident.triggered", "triggered")]).await;
    settle(&relay).await;
    relay.shutdown().await.unwrap();

    let relay = spawn_relay(&config, dir.path()).await;
    let ids = send(
        &relay,
        &[
            pd("P8", 2, "incident.triggered", "triggered"),
            pd("P8", 3, "incident.resolved", "resolved"),
        ],
    )
    .await;
    settle(&relay).await;
    let (state, why) = outcome(&relay, ids[0], "hub").await;
    assert_eq!(state, DeliveryState::Skipped, "{why}");
    let got = hub.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].json()["INCIDENT.INCIDENT_ID"],
        got[0].json()["INCIDENT.INCIDENT_ID"],
        "the resolve is for the incident opened before the restart"
    );
    assert_eq!(got[1].json()["STATE.ALERT_COUNT"], 3);
    relay.shutdown().await.unwrap();
}

/// Guards the shared record (PostgreSQL): two instances on one database; the repeat and the
/// resolve sent to the second instance are judged against the incident the first opened.
/// Fails with the PostgreSQL `key_state` reading nothing.
#[tokio::test]
async fn instances_on_one_database_share_incidents() {
    let db = fresh_database().await;
    let hub = Receiver::ok().await;
    let (a_dir, b_dir) = (tempdir(), tempdir());
    let config = format!("{SOURCES}\n{}{RULES}", statushub("hub", &hub, ""),).replace(
        "[store]\n",
        &format!("[store]\nbackend = \"postgres\"\nurl = \"{db}\"\n"),
    );
    let a = spawn_relay(&config, a_dir.path()).await;
    let b = spawn_relay(&config, b_dir.path()).await;
    send(&a, &[pd("P9", 1, "incident.triggered", "triggered")]).await;
    assert!(wait_until(Duration::from_secs(10), || hub.count() == 1).await);
    let ids = send(
        &b,
        &[
            pd("P9", 2, "incident.triggered", "triggered"),
            pd("P9", 3, "incident.resolved", "resolved"),
        ],
    )
    .await;
    settle(&b).await;
    let (state, why) = outcome(&b, ids[0], "hub").await;
    assert_eq!(state, DeliveryState::Skipped, "{why}");
    assert!(why.starts_with("not fired: a repeated CRITICAL"), "{why}");
    let got = hub.requests();
    assert_eq!(phases(&got).len(), 2, "{:?}", phases(&got));
    assert_eq!(
        got[1].json()["INCIDENT.INCIDENT_ID"],
        got[0].json()["INCIDENT.INCIDENT_ID"]
    );
    assert_eq!(got[1].json()["STATE.CURRENT_ALERT_PHASE"], "RESOLVED");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The JSON type of a value, by name.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Guards the body's shape against the captured VictorOps blank payload: every key of the
/// capture, with its JSON type (removing a key from `normalize::victorops::namespaces`, or
/// writing a timestamp as a string, fails it); millisecond timestamps; the phases. And that a
/// retried trigger sends the identical body: the record is not advanced by the failed attempt
/// (writing it on a retry makes the retry a skipped repeat, and `hub` gets one request).
#[tokio::test]
async fn bodies_have_the_captured_blank_payloads_keys_and_types() {
    let capture: serde_json::Map<String, Value> =
        serde_json::from_slice(&fixture("victorops-blank-payload.json")).unwrap();
    let dir = tempdir();
    let hub = Receiver::statuses(&[503]).await;
    let config = format!("{SOURCES}{}{RULES}", statushub("hub", &hub, ""));
    let relay = spawn_relay(&config, dir.path()).await;
    send(
        &relay,
        &[
            pd("P6", 1, "incident.triggered", "triggered"),
            pd("P6", 2, "incident.acknowledged", "acknowledged"),
            pd("P6", 3, "incident.resolved", "resolved"),
        ],
    )
    .await;
    settle(&relay).await;
    let got = hub.requests();
    assert_eq!(
        got.len(),
        4,
        "the trigger twice (503, then 200), ack, resolve"
    );
    assert_eq!(
        got[0].body, got[1].body,
        "a retry resends the identical body"
    );
    let bodies: Vec<serde_json::Map<String, Value>> = got[1..]
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        for (k, v) in &capture {
            let got = body.get(k).unwrap_or_else(|| panic!("body {i} lacks {k}"));
            // The capture is a trigger: `null` there is who acknowledged or resolved it,
            // filled in once someone did.
            let ok = kind(got) == kind(v)
                || (i > 0 && v.is_null() && matches!(kind(got), "string" | "number"));
            assert!(ok, "body {i}: {k} is {got}, the capture has {v}");
        }
    }
    let trigger = &bodies[0];
    for (k, v) in &capture {
        assert_eq!(kind(&trigger[k]), kind(v), "the trigger body's {k}");
    }
    for k in [
        "INCIDENT.INCIDENT_TIMESTAMP",
        "STATE.STATE_START_TIME",
        "STATE.LAST_TIMESTAMP",
        "STATE.INCIDENT_TIMESTAMP",
        "INCIDENT.SEQUENCING.SERVICE_TIME",
    ] {
        assert_eq!(
            trigger[k],
            json!(1_622_813_729_781i64 - if k.ends_with("SERVICE_TIME") { 781 } else { 0 }),
            "{k} in ms"
        );
    }
    let phase = |b: &serde_json::Map<String, Value>| {
        (
            b["INCIDENT.CURRENT_PHASE"].as_str().unwrap().to_owned(),
            b["STATE.CURRENT_ALERT_PHASE"].as_str().unwrap().to_owned(),
            b["INCIDENT.ALERT_COUNT"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        bodies.iter().map(phase).collect::<Vec<_>>(),
        [
            ("UNACKED".into(), "UNACKED".into(), 1),
            ("ACKED".into(), "ACKED".into(), 2),
            ("RESOLVED".into(), "RESOLVED".into(), 3),
        ]
    );
    assert_eq!(bodies[1]["STATE.ACKED_BY"], "PIG 208");
    assert_eq!(bodies[2]["STATE.RESOLVED_BY"], "PIG 208");
    assert_eq!(bodies[2]["INCIDENT.ACK_DATA.ACKS_RECEIVED"], 1);
    relay.shutdown().await.unwrap();
}
