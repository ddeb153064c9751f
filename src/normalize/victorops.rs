//! The VictorOps view of an event: the flat `ALERT.*`, `STATE.*` and `INCIDENT.*` variables that
//! VictorOps outgoing webhooks expose as `${{NS.FIELD}}` and send, as one flat JSON object, when
//! their payload is left blank. StatusHub's `victor_ops` hook reads that body.
//!
//! The map has every key of the captured blank payload
//! (`tests/fixtures/victorops-blank-payload.json`), with the same JSON types: millisecond
//! timestamps as numbers, counts as numbers, `STATE.ACKED_BY`/`ACKED_AT`/`RESOLVED_BY`/
//! `RESOLVED_AT` `null` until the incident was acknowledged or resolved. `ALERT.*` is the
//! event's `alert` map in its original key case, plus the capture's `ALERT.*` keys where the
//! alert lacks them. `STATE.*` and `INCIDENT.*` come from an [`IncidentView`]: for the
//! `statushub` target the entity's incident as the relay keeps it (see `targets::incident`),
//! elsewhere the one-alert incident [`IncidentView::of_alert`] derives from the event alone.
//!
//! | variable | value |
//! |---|---|
//! | `INCIDENT.INCIDENT_ID`, `STATE.INCIDENT_NAME` | the incident's number (a string; `INCIDENT.INCIDENT_NAME` is `#` and the number) |
//! | `INCIDENT.CURRENT_PHASE`, `STATE.CURRENT_ALERT_PHASE` | `UNACKED`, `ACKED` or `RESOLVED` |
//! | `INCIDENT.ENTITY_STATE`, `STATE.CURRENT_STATE` | `CRITICAL`, `WARNING`, `INFO`, or `OK` once resolved |
//! | `INCIDENT.ALERT_COUNT`, `STATE.ALERT_COUNT` | alerts the incident has had |
//! | `INCIDENT.INCIDENT_TIMESTAMP`, `STATE.INCIDENT_TIMESTAMP` | when it opened (ms) |
//! | `STATE.STATE_START_TIME`, `STATE.LAST_TIMESTAMP` | when its current state began; its latest alert (ms) |
//! | `INCIDENT.SEQUENCING.SEQUENCE`, `INCIDENT.SEQUENCING.SERVICE_TIME` | the delivery's number; the latest alert's time, whole seconds in ms |
//! | `STATE.ACKED_BY`, `STATE.ACKED_AT`, `STATE.ACK_USER`, `STATE.ACK_TIMESTAMP`, `INCIDENT.POLICIES_PAGED.0.ACKED_BY`/`ACKED_AT` | who acknowledged it and when (`alert.ack_author`, else `alert.agent`, else the monitoring tool) |
//! | `STATE.RESOLVED_BY`, `STATE.RESOLVED_AT`, `INCIDENT.USER` | who resolved it and when (same fields) |
//! | `INCIDENT.FIRST_ALERT_UUID`, `INCIDENT.LATEST_ALERT_UUID`, `STATE.LAST_UUID`, `ALERT.VO_UUID` | relay event ids |
//! | `STATE.ENTITY_ID`, `INCIDENT.ENTITY_ID` | `alert.entity_id` |
//! | `STATE.SERVICE`, `INCIDENT.SERVICE`, `INCIDENT.ENTITY_DISPLAY_NAME` | `alert.entity_display_name` |
//! | `STATE.ENTITY_SLUG`, `INCIDENT.ENTITY_SLUG` | `alert.service_slug`, else empty |
//! | `STATE.HOST`, `INCIDENT.HOST` | `alert.host_name`, else empty |
//! | `STATE.MONITOR_TYPE`, `INCIDENT.MONITOR_TYPE`, `INCIDENT.MONITOR_NAME` | `alert.monitoring_tool` (`INCIDENT.MONITOR_NAME`: `alert.monitor_name` when set) |
//! | `STATE.TEAMS_PAGED.0`, `INCIDENT.TEAMS_PAGED.0`, `INCIDENT.POLICIES_PAGED.0.*` names | `alert.routing_key`, else empty (the relay pages no one) |
//! | `STATE.INFO_URL` | `alert.incident_url`, else empty |
//! | `INCIDENT.ANNOTATION_COUNT` | the alert's `vo_annotate.*` fields |
//! | `INCIDENT.ACK_DATA.ACKS_RECEIVED` | 1 once acknowledged, else 0 |
//! | `INCIDENT.TAGS.0`…`3` | `incident<number>`, `routing<routing key or "default">`, and VictorOps' two notification tags |
//! | `ALERT.VO_ALERT_RCV_TIME` | `received_at` in ms (a string, as VictorOps sends it) |
//! | `ALERT.alert_type` | `alert.message_type` |
//! | `ALERT.VO_ORGANIZATION_ID` | the source's name |
//! | `ALERT.created_by`, `ALERT.monitor_name` | `alert.monitoring_tool` |
//! | constants | `INCIDENT.ENTITY_TYPE`, `STATE.VO_ALERT_TYPE` `SERVICE`; `INCIDENT.ROOM_ID` `*`; `INCIDENT.IS_MULTI_RESPONDER`, `INCIDENT.IS_MUTED`, `INCIDENT.POLICIES_PAGED.0.IS_DISPLAYABLE` `false`; `INCIDENT.ACK_DATA.ACKS_EXPECTED` 0; `STATE.ACK_MSG`, `STATE.NOTIFICATIONTYPE`, `STATE.USERS_PAGED.0`, `ALERT.VO_MONITOR_TYPE` empty |
//!
//! The `ALERT.*` defaults are only added where the alert does not set them.

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
        clamp_field(k, v);
    }
}

/// Cuts `value`, the value of alert field `field`, to the field's VictorOps limit.
pub fn clamp_field(field: &str, value: &mut String) {
    let limit = field_limit(field);
    // No more bytes than the limit means no more characters: nothing to count.
    if value.len() <= limit {
        return;
    }
    if let Some((cut, _)) = value.char_indices().nth(limit) {
        value.truncate(cut);
    }
}

/// Epoch milliseconds of an RFC 3339 time; 0 when it does not parse.
pub fn millis(rfc3339: &str) -> i64 {
    parse_time(rfc3339).map_or(0, |t| t.timestamp_millis())
}

/// The incident an alert belongs to, as the flat map shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentView {
    pub number: u64,
    /// `UNACKED`, `ACKED` or `RESOLVED`.
    pub phase: &'static str,
    /// `CRITICAL`, `WARNING`, `INFO` or `OK`.
    pub state: String,
    pub alert_count: u64,
    pub opened_ms: i64,
    pub state_start_ms: i64,
    pub last_ms: i64,
    /// The event id of the alert that opened it.
    pub first_alert: String,
    pub acked: Option<(String, i64)>,
    pub resolved: Option<(String, i64)>,
    /// The delivery this view is sent with.
    pub sequence: u64,
}

impl IncidentView {
    /// What one alert alone says: an incident of one alert, numbered by its delivery, in the
    /// phase its `message_type` implies.
    pub fn of_alert(event: &Event, sequence: u64) -> IncidentView {
        let message_type = event
            .alert
            .get("message_type")
            .map(|m| m.to_ascii_uppercase())
            .unwrap_or_default();
        let at = millis(&event.occurred_at);
        let by = || (actor(event), at);
        let (phase, state, acked, resolved) = match message_type.as_str() {
            "RECOVERY" | "OK" => ("RESOLVED", "OK", None, Some(by())),
            "ACKNOWLEDGEMENT" => ("ACKED", "CRITICAL", Some(by()), None),
            "WARNING" => ("UNACKED", "WARNING", None, None),
            "INFO" => ("UNACKED", "INFO", None, None),
            _ => ("UNACKED", "CRITICAL", None, None),
        };
        IncidentView {
            number: sequence,
            phase,
            state: state.into(),
            alert_count: 1,
            opened_ms: at,
            state_start_ms: at,
            last_ms: at,
            first_alert: event.id.clone(),
            acked,
            resolved,
            sequence,
        }
    }
}

/// Who an acknowledgement or recovery is attributed to.
pub fn actor(event: &Event) -> String {
    ["ack_author", "agent", "monitoring_tool"]
        .iter()
        .find_map(|k| event.alert.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_default()
}

/// The flat variable map, keys like `ALERT.entity_id` and `STATE.CURRENT_STATE`, in the
/// capture's order: `INCIDENT.*`, `ALERT.*`, `STATE.*`.
pub fn namespaces(event: &Event, incident: &IncidentView) -> Map<String, Value> {
    let alert = &event.alert;
    let get = |k: &str| alert.get(k).cloned().unwrap_or_default();
    let s = |v: String| Value::String(v);
    let ms_or_null = |v: Option<i64>| v.map_or(Value::Null, Value::from);
    let display = get("entity_display_name");
    let entity = get("entity_id");
    let host = get("host_name");
    let tool = get("monitoring_tool");
    let slug = get("service_slug");
    let routing = get("routing_key");
    let number = incident.number.to_string();
    let (acked_by, acked_at) = incident
        .acked
        .clone()
        .map_or((None, None), |(b, a)| (Some(b), Some(a)));
    let (resolved_by, resolved_at) = incident
        .resolved
        .clone()
        .map_or((None, None), |(b, a)| (Some(b), Some(a)));
    let annotations = alert
        .keys()
        .filter(|k| k.starts_with("vo_annotate."))
        .count();
    let mut m = Map::with_capacity(80 + alert.len());
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("INCIDENT.INCIDENT_ID", s(number.clone()));
    put("INCIDENT.INCIDENT_NAME", s(format!("#{number}")));
    put("INCIDENT.INCIDENT_TIMESTAMP", incident.opened_ms.into());
    put("INCIDENT.ENTITY_TYPE", s("SERVICE".into()));
    put("INCIDENT.ENTITY_SLUG", s(slug.clone()));
    put("INCIDENT.HOST", s(host.clone()));
    put("INCIDENT.SERVICE", s(display.clone()));
    put("INCIDENT.CURRENT_PHASE", s(incident.phase.into()));
    put("INCIDENT.ANNOTATION_COUNT", annotations.into());
    put("INCIDENT.ALERT_COUNT", incident.alert_count.into());
    put("INCIDENT.ENTITY_STATE", s(incident.state.clone()));
    put("INCIDENT.TEAMS_PAGED.0", s(routing.clone()));
    put("INCIDENT.POLICIES_PAGED.0.IS_DISPLAYABLE", false.into());
    for k in ["POLICY.NAME", "POLICY.SLUG", "TEAM.NAME", "TEAM.SLUG"] {
        put(
            &format!("INCIDENT.POLICIES_PAGED.0.{k}"),
            s(routing.clone()),
        );
    }
    put(
        "INCIDENT.POLICIES_PAGED.0.ACKED_BY",
        s(acked_by.clone().unwrap_or_default()),
    );
    put(
        "INCIDENT.POLICIES_PAGED.0.ACKED_AT",
        acked_at.unwrap_or(0).into(),
    );
    put("INCIDENT.MONITOR_TYPE", s(tool.clone()));
    put(
        "INCIDENT.MONITOR_NAME",
        s(alert.get("monitor_name").cloned().unwrap_or(tool.clone())),
    );
    put(
        "INCIDENT.USER",
        s(resolved_by.clone().or(acked_by.clone()).unwrap_or_default()),
    );
    put("INCIDENT.FIRST_ALERT_UUID", s(incident.first_alert.clone()));
    put("INCIDENT.LATEST_ALERT_UUID", s(event.id.clone()));
    put("INCIDENT.TAGS.0", s(format!("incident{number}")));
    let routing_tag = if routing.is_empty() {
        "default"
    } else {
        &routing
    };
    put("INCIDENT.TAGS.1", s(format!("routing{routing_tag}")));
    put("INCIDENT.TAGS.2", s("typesystemmessagenotify".into()));
    put("INCIDENT.TAGS.3", s("typeincidentnotify".into()));
    put("INCIDENT.SEQUENCING.SEQUENCE", incident.sequence.into());
    put(
        "INCIDENT.SEQUENCING.SERVICE_TIME",
        (incident.last_ms - incident.last_ms.rem_euclid(1000)).into(),
    );
    put("INCIDENT.ROOM_ID", s("*".into()));
    put("INCIDENT.IS_MULTI_RESPONDER", false.into());
    put("INCIDENT.IS_MUTED", false.into());
    put("INCIDENT.ENTITY_DISPLAY_NAME", s(display.clone()));
    put("INCIDENT.ENTITY_ID", s(entity.clone()));
    put("INCIDENT.ACK_DATA.ACKS_EXPECTED", 0.into());
    put(
        "INCIDENT.ACK_DATA.ACKS_RECEIVED",
        u8::from(acked_by.is_some()).into(),
    );
    for (k, v) in alert {
        put(&format!("ALERT.{k}"), s(v.clone()));
    }
    let received = millis(&event.received_at);
    let message_type = get("message_type");
    for (k, v) in [
        ("VO_ORGANIZATION_ID", event.source.clone()),
        ("created_by", tool.clone()),
        ("VO_UUID", event.id.clone()),
        ("VO_ALERT_RCV_TIME", received.to_string()),
        ("alert_type", message_type),
        ("monitor_name", tool.clone()),
        ("VO_MONITOR_TYPE", String::new()),
    ] {
        if !alert.contains_key(k) {
            put(&format!("ALERT.{k}"), s(v));
        }
    }
    put("STATE.ENTITY_ID", s(entity));
    put("STATE.ENTITY_SLUG", s(slug));
    put("STATE.HOST", s(host));
    put("STATE.SERVICE", s(display));
    put("STATE.LAST_UUID", s(event.id.clone()));
    put("STATE.CURRENT_ALERT_PHASE", s(incident.phase.into()));
    put("STATE.ACK_MSG", s(String::new()));
    put("STATE.ACK_USER", s(acked_by.clone().unwrap_or_default()));
    put("STATE.ACK_TIMESTAMP", acked_at.unwrap_or(0).into());
    put("STATE.CURRENT_STATE", s(incident.state.clone()));
    put("STATE.STATE_START_TIME", incident.state_start_ms.into());
    put("STATE.ALERT_COUNT", incident.alert_count.into());
    put("STATE.LAST_TIMESTAMP", incident.last_ms.into());
    put("STATE.INFO_URL", s(get("incident_url")));
    put("STATE.NOTIFICATIONTYPE", s(String::new()));
    put("STATE.VO_ALERT_TYPE", s("SERVICE".into()));
    put("STATE.INCIDENT_NAME", s(number));
    put("STATE.INCIDENT_TIMESTAMP", incident.opened_ms.into());
    put("STATE.MONITOR_TYPE", s(tool));
    put("STATE.TEAMS_PAGED.0", s(routing));
    put("STATE.USERS_PAGED.0", s(String::new()));
    put("STATE.ACKED_BY", acked_by.map_or(Value::Null, s));
    put("STATE.ACKED_AT", ms_or_null(acked_at));
    put("STATE.RESOLVED_BY", resolved_by.map_or(Value::Null, s));
    put("STATE.RESOLVED_AT", ms_or_null(resolved_at));
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
