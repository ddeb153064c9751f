//! The VictorOps view of an event: the flat `ALERT.*`, `STATE.*` and `INCIDENT.*` variables that
//! VictorOps outgoing webhooks expose as `${{NS.FIELD}}` and send, as one flat JSON object, when
//! their payload is left blank. StatusHub's `victor_ops` hook reads that body.
//!
//! `ALERT.*` is the event's `alert` map in its original key case. `STATE.*` and `INCIDENT.*` are
//! derived from it; VictorOps computes them from incident history the relay does not have, so
//! each derivation is the nearest one-alert equivalent:
//!
//! | variable | value |
//! |---|---|
//! | `STATE.CURRENT_STATE`, `INCIDENT.ENTITY_STATE` | `CRITICAL`, `WARNING`, `INFO`, or `OK` after a `RECOVERY`; an acknowledgement keeps `CRITICAL` |
//! | `STATE.CURRENT_ALERT_PHASE`, `INCIDENT.CURRENT_PHASE` | `ACKED` for `ACKNOWLEDGEMENT`, `RESOLVED` for `RECOVERY`, else `UNACKED` |
//! | `STATE.ENTITY_ID`, `INCIDENT.ENTITY_ID`, `INCIDENT.INCIDENT_ID` | `alert.entity_id` |
//! | `STATE.SERVICE`, `STATE.INCIDENT_NAME`, `INCIDENT.SERVICE`, `INCIDENT.ENTITY_DISPLAY_NAME` | `alert.entity_display_name` |
//! | `STATE.HOST`, `INCIDENT.HOST` | `alert.host_name`, else empty |
//! | `STATE.MONITOR_TYPE`, `INCIDENT.MONITOR_TYPE` | `alert.monitoring_tool` |
//! | `STATE.ALERT_COUNT`, `INCIDENT.ALERT_COUNT` | `1` |
//! | `STATE.STATE_START_TIME`, `STATE.LAST_TIMESTAMP`, `STATE.INCIDENT_TIMESTAMP`, `INCIDENT.INCIDENT_TIMESTAMP` | `occurred_at` in epoch milliseconds (numbers) |
//! | `INCIDENT.ENTITY_TYPE` | `SERVICE` |
//! | `ALERT.VO_UUID` | the event id |
//! | `ALERT.VO_ALERT_RCV_TIME` | `received_at` in epoch milliseconds (a string, as VictorOps sends it) |
//! | `ALERT.alert_type` | `alert.message_type` |
//!
//! The three `ALERT.VO_*`/`alert_type` fields are only added where the alert does not set them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{parse_time, Event};

/// Field length limits VictorOps enforces on alerts, in characters; annotations
/// (`vo_annotate.*`) have their own.
pub fn field_limit(field: &str) -> usize {
    match field {
        "state_message" => PAYLOAD_VALUE_LIMIT,
        "entity_id" => 512,
        f if f.starts_with("vo_annotate.") => 1124,
        _ => 1024,
    }
}

/// The longest field VictorOps keeps (`state_message`), in characters: also how much of a
/// payload value rules read.
pub const PAYLOAD_VALUE_LIMIT: usize = 20_480;

/// Cuts every alert field to its VictorOps limit.
pub fn clamp_fields(alert: &mut BTreeMap<String, String>) {
    for (k, v) in alert.iter_mut() {
        let limit = field_limit(k);
        if let Some((cut, _)) = v.char_indices().nth(limit) {
            v.truncate(cut);
        }
    }
}

fn millis(rfc3339: &str) -> Value {
    parse_time(rfc3339).map_or(Value::Null, |t| Value::from(t.timestamp_millis()))
}

/// The flat variable map, keys like `ALERT.entity_id` and `STATE.CURRENT_STATE`.
pub fn namespaces(event: &Event) -> Map<String, Value> {
    let alert = &event.alert;
    let get = |k: &str| alert.get(k).cloned().unwrap_or_default();
    let message_type = get("message_type");
    let state = match message_type.as_str() {
        "RECOVERY" | "OK" => "OK",
        "WARNING" => "WARNING",
        "INFO" => "INFO",
        _ => "CRITICAL",
    };
    let phase = match message_type.as_str() {
        "ACKNOWLEDGEMENT" => "ACKED",
        "RECOVERY" | "OK" => "RESOLVED",
        _ => "UNACKED",
    };
    let occurred = millis(&event.occurred_at);
    let received = millis(&event.received_at);
    let mut m = Map::new();
    for (k, v) in alert {
        m.insert(format!("ALERT.{k}"), Value::String(v.clone()));
    }
    let mut default = |k: &str, v: Value| {
        m.entry(k.to_owned()).or_insert(v);
    };
    default("ALERT.VO_UUID", Value::String(event.id.clone()));
    default(
        "ALERT.VO_ALERT_RCV_TIME",
        Value::String(received.as_i64().map(|r| r.to_string()).unwrap_or_default()),
    );
    default("ALERT.alert_type", Value::String(message_type.clone()));
    let display = Value::String(get("entity_display_name"));
    let entity = Value::String(get("entity_id"));
    let host = Value::String(get("host_name"));
    let tool = Value::String(get("monitoring_tool"));
    let derived = [
        ("STATE.ENTITY_ID", entity.clone()),
        ("STATE.CURRENT_STATE", state.into()),
        ("STATE.CURRENT_ALERT_PHASE", phase.into()),
        ("STATE.SERVICE", display.clone()),
        ("STATE.INCIDENT_NAME", display.clone()),
        ("STATE.HOST", host.clone()),
        ("STATE.MONITOR_TYPE", tool.clone()),
        ("STATE.ALERT_COUNT", 1.into()),
        ("STATE.STATE_START_TIME", occurred.clone()),
        ("STATE.LAST_TIMESTAMP", occurred.clone()),
        ("STATE.INCIDENT_TIMESTAMP", occurred.clone()),
        ("INCIDENT.INCIDENT_ID", entity.clone()),
        ("INCIDENT.ENTITY_ID", entity),
        ("INCIDENT.ENTITY_DISPLAY_NAME", display.clone()),
        ("INCIDENT.SERVICE", display),
        ("INCIDENT.HOST", host),
        ("INCIDENT.ENTITY_TYPE", "SERVICE".into()),
        ("INCIDENT.ENTITY_STATE", state.into()),
        ("INCIDENT.CURRENT_PHASE", phase.into()),
        ("INCIDENT.MONITOR_TYPE", tool),
        ("INCIDENT.ALERT_COUNT", 1.into()),
        ("INCIDENT.INCIDENT_TIMESTAMP", occurred),
    ];
    for (k, v) in derived {
        m.insert(k.to_owned(), v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_characters() {
        let mut a = BTreeMap::new();
        a.insert("entity_id".to_owned(), "é".repeat(600));
        a.insert("title".to_owned(), "x".repeat(1000));
        a.insert("vo_annotate.u.Runbook".to_owned(), "y".repeat(1200));
        clamp_fields(&mut a);
        assert_eq!(a["entity_id"].chars().count(), 512);
        assert_eq!(a["title"].len(), 1000);
        assert_eq!(
            a["vo_annotate.u.Runbook"].len(),
            1124,
            "annotations keep 1,124"
        );
    }
}
