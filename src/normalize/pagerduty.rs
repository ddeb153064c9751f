//! PagerDuty V3 envelopes and legacy V1/V2 `messages` batches.
//!
//! PagerDuty treats every 4xx as a permanent drop that counts towards disabling the
//! subscription, so anything shaped like a PagerDuty webhook is accepted: `pagey.ping`, event
//! types this relay has never heard of, and messages it cannot read are all stored raw with type
//! information kept. Only a body that is not a JSON object with `event` or `messages` is refused.
//!
//! The dedup key is `X-Webhook-Id` (repeated on every retry of one webhook), else the event or
//! message id, else a digest of the body (of the message, for a batch). Ingest leaves
//! `X-Webhook-Id` out for a source that checks signatures: the header is not signed, the
//! event id is.
//!
//! Each message of a V1/V2 batch becomes an event whose raw body is that message's own JSON
//! text, so a batch is stored once in all, not once per message; a batch of more than
//! `server.max_batch_messages` is refused whole.

mod typed;

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

use self::typed::{Fields, ObjKey, TextKey};
use super::{
    digest, nonempty_at, parse_json, parse_time, put, text_at, NormalizeError, Parsed, Service,
};

pub(crate) fn parse(
    text: &str,
    webhook_id: Option<&str>,
    max_messages: usize,
) -> Result<Vec<Parsed>, NormalizeError> {
    // The usual body, a V3 event, in one pass without building a `Value`; anything else (a
    // batch, an error, an oddity) on the general path below, which decides.
    match typed::event(text) {
        Some(event) => Ok(vec![v3(&event, text, webhook_id)]),
        None => parse_value(text, webhook_id, max_messages),
    }
}

/// Any body, through `serde_json::Value`s: what [`parse`] falls back on, and the reference its
/// one-pass V3 reader is tested against.
fn parse_value(
    text: &str,
    webhook_id: Option<&str>,
    max_messages: usize,
) -> Result<Vec<Parsed>, NormalizeError> {
    // The top level as raw slices of `text` (a repeated key keeps its last value, as with a
    // `Value`), so each batch message can keep its own bytes without being written out again.
    let top: BTreeMap<String, &RawValue> = match serde_json::from_str(text) {
        Ok(top) => top,
        Err(e) if e.is_data() => {
            return Err(NormalizeError::Shape(
                "a PagerDuty body must be a JSON object".into(),
            ))
        }
        Err(e) => return Err(NormalizeError::Json(e.to_string())),
    };
    if let Some(raw) = top.get("event") {
        let event = parse_json(raw.get())?;
        if event.is_object() {
            return Ok(vec![v3(&event, text, webhook_id)]);
        }
    }
    if let Some(raw) = top.get("messages") {
        if let Ok(messages) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
            if messages.len() > max_messages {
                return Err(NormalizeError::TooManyMessages {
                    count: messages.len(),
                    max: max_messages,
                });
            }
            return messages
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    let own = raw.get();
                    let m = parse_json(own)?;
                    // Per message, over its own bytes: a batch costs what its size does.
                    let dedup = nonempty_at(&m, &["id"])
                        .or_else(|| webhook_id.map(|w| format!("{w}#{i}")))
                        .unwrap_or_else(|| digest(&["pagerduty.legacy", &i.to_string(), own]));
                    let mut parsed = legacy(&m, dedup);
                    let start = own.as_ptr() as usize - text.as_ptr() as usize;
                    parsed.raw_range = Some(start..start + own.len());
                    Ok(parsed)
                })
                .collect();
        }
    }
    Err(NormalizeError::Shape(
        "JSON body is not a PagerDuty webhook: expected an `event` object (V3) or a `messages` \
         array (V1/V2)"
            .into(),
    ))
}

/// What the three generations share once their field names are mapped.
struct Incident<'a, O> {
    format: &'static str,
    event_type: String,
    occurred: Option<String>,
    incident: Option<&'a O>,
    entity_id: Option<String>,
    title: Option<String>,
    details: Option<String>,
    service: Service,
    number: Option<String>,
    agent: Option<String>,
    priority: Option<String>,
}

/// `key` of `o` as text (see [`Fields::text`]).
fn text<O: Fields>(o: &O, key: TextKey) -> Option<String> {
    o.text(key).map(|t| t.into_owned())
}

/// Like [`text`], but an empty string counts as absent.
fn nonempty<O: Fields>(o: &O, key: TextKey) -> Option<String> {
    o.text(key)
        .filter(|t| !t.is_empty())
        .map(|t| t.into_owned())
}

/// A V3 event, read from a `Value` or in one pass: both take the same mapping.
fn v3<O: Fields>(event: &O, body: &str, webhook_id: Option<&str>) -> Parsed {
    let dedup_key = webhook_id
        .map(str::to_owned)
        .or_else(|| nonempty(event, TextKey::Id))
        .unwrap_or_else(|| digest(&["pagerduty.v3", body]));
    let event_type = nonempty(event, TextKey::EventType).unwrap_or_else(|| "unknown".into());
    // `data` of another type than an object reads as absent: it has no fields.
    let data = event.object(ObjKey::Data);
    let data_type = data.and_then(|d| d.text(TextKey::Type));
    let data_type = data_type.as_deref().unwrap_or_default();
    // The incident itself, or the incident a note, responder, task, … refers to.
    let incident = if data_type == "incident" {
        data
    } else {
        data.and_then(|d| d.object(ObjKey::Incident))
    };
    let details = match data_type {
        "incident_note" => data.and_then(|d| nonempty(d, TextKey::Content)),
        "incident_status_update" | "incident_responder" | "ping" => {
            data.and_then(|d| nonempty(d, TextKey::Message))
        }
        _ => None,
    };
    let title = incident
        .and_then(|i| nonempty(i, TextKey::Title).or_else(|| nonempty(i, TextKey::Summary)))
        .or_else(|| data.and_then(|d| nonempty(d, TextKey::Summary)))
        .or_else(|| data.and_then(|d| nonempty(d, TextKey::Message)));
    // The incident's `service` whatever its type (another type reads as a service without
    // fields), else a service event's own data.
    let service = match incident.filter(|i| i.has(ObjKey::Service)) {
        Some(i) => i
            .object(ObjKey::Service)
            .map(reference_service)
            .unwrap_or_default(),
        None if data_type == "service" => data.map(reference_service).unwrap_or_default(),
        None => Service::default(),
    };
    let entity_id = incident
        .and_then(|i| nonempty(i, TextKey::Id))
        .or_else(|| data.and_then(|d| nonempty(d, TextKey::Id)))
        .or_else(|| nonempty(event, TextKey::ResourceType));
    let parsed = Incident {
        format: "pagerduty.v3",
        event_type: if event_type == "pagey.ping" {
            "ping".into()
        } else {
            event_type.clone()
        },
        occurred: nonempty(event, TextKey::OccurredAt),
        incident,
        entity_id,
        title,
        details,
        service,
        number: incident.and_then(|i| text(i, TextKey::Number)),
        agent: event
            .object(ObjKey::Agent)
            .and_then(|a| nonempty(a, TextKey::Summary)),
        priority: incident
            .and_then(|i| i.object(ObjKey::Priority))
            .and_then(|p| nonempty(p, TextKey::Summary)),
    };
    let mut out = finish(parsed, dedup_key);
    put(&mut out.alert, "pagerduty_event_type", Some(event_type));
    put(
        &mut out.alert,
        "resource_type",
        nonempty(event, TextKey::ResourceType),
    );
    out
}

fn legacy(m: &Value, dedup_key: String) -> Parsed {
    if let Some(t) = nonempty_at(m, &["type"]) {
        // V1: `type` plus `data.incident`.
        let incident = m.get("data").and_then(|d| d.get("incident"));
        let inc = incident.unwrap_or(&Value::Null);
        let title = nonempty_at(inc, &["trigger_summary_data", "subject"])
            .or_else(|| nonempty_at(inc, &["trigger_summary_data", "description"]));
        let parsed = Incident {
            format: "pagerduty.v1",
            event_type: t.clone(),
            occurred: nonempty_at(m, &["created_on"]),
            incident,
            entity_id: nonempty_at(inc, &["id"]),
            title,
            details: None,
            service: Service {
                id: nonempty_at(inc, &["service", "id"]),
                name: nonempty_at(inc, &["service", "name"]),
                home_page_url: nonempty_at(inc, &["service", "html_url"]),
                ..Service::default()
            },
            number: text_at(inc, &["incident_number"]),
            agent: nonempty_at(inc, &["last_status_change_by", "name"]),
            priority: None,
        };
        let mut out = finish(parsed, dedup_key);
        put(&mut out.alert, "pagerduty_event_type", Some(t));
        return out;
    }
    // V2: `event` plus `incident` and `log_entries`; anything else is kept as `unknown`.
    let event_type = nonempty_at(m, &["event"]).unwrap_or_else(|| "unknown".into());
    let incident = m.get("incident").filter(|i| i.is_object());
    let inc = incident.unwrap_or(&Value::Null);
    let title = nonempty_at(inc, &["title"]).or_else(|| nonempty_at(inc, &["summary"]));
    let description = nonempty_at(inc, &["description"]).filter(|d| Some(d) != title.as_ref());
    let parsed = Incident {
        format: if m.get("event").is_some() {
            "pagerduty.v2"
        } else {
            "pagerduty.unknown"
        },
        event_type: event_type.clone(),
        occurred: nonempty_at(m, &["created_on"]),
        incident,
        entity_id: nonempty_at(inc, &["id"]),
        title,
        details: description,
        service: inc
            .get("service")
            .map(reference_service)
            .unwrap_or_default(),
        number: text_at(inc, &["incident_number"]),
        agent: m
            .get("log_entries")
            .and_then(|l| l.get(0))
            .and_then(|l| nonempty_at(l, &["agent", "summary"])),
        priority: nonempty_at(inc, &["priority", "summary"]),
    };
    let mut out = finish(parsed, dedup_key);
    put(&mut out.alert, "pagerduty_event_type", Some(event_type));
    out
}

/// VictorOps `message_type` and `entity_state` of a PagerDuty event type (V3 `incident.*`,
/// V1/V2 `incident.*` in the imperative). Only the events that change an incident's state map
/// to anything but `INFO`: a priority change, an escalation, a note or a reassignment of a
/// triggered incident is not a new trigger (the incident's `status` would say `triggered`).
fn message_type_for(event_type: &str) -> (&'static str, &'static str) {
    match event_type.strip_prefix("incident.").unwrap_or_default() {
        "triggered" | "trigger" | "unacknowledged" | "unacknowledge" | "reopened" => {
            ("CRITICAL", "CRITICAL")
        }
        "acknowledged" | "acknowledge" => ("ACKNOWLEDGEMENT", "ACKNOWLEDGEMENT"),
        "resolved" | "resolve" => ("RECOVERY", "OK"),
        _ => ("INFO", "INFO"),
    }
}

/// A V2/V3 reference (`{id, summary, html_url, …}`) as a [`Service`].
fn reference_service<O: Fields>(s: &O) -> Service {
    Service {
        id: nonempty(s, TextKey::Id),
        name: nonempty(s, TextKey::Name).or_else(|| nonempty(s, TextKey::Summary)),
        home_page_url: nonempty(s, TextKey::HtmlUrl),
        ..Service::default()
    }
}

fn finish<O: Fields>(p: Incident<'_, O>, dedup_key: String) -> Parsed {
    let inc = |key| p.incident.and_then(|i| nonempty(i, key));
    let status = inc(TextKey::Status).map(|s| s.to_ascii_lowercase());
    let title = p.title.unwrap_or_else(|| match &p.number {
        Some(n) => format!("Incident #{n}"),
        None => format!("PagerDuty {}", p.event_type),
    });
    let (message_type, entity_state) = message_type_for(&p.event_type);
    let entity_id = p.entity_id.unwrap_or_else(|| dedup_key.clone());
    let mut alert = BTreeMap::new();
    alert.insert("entity_id".into(), entity_id);
    alert.insert("entity_display_name".into(), title.clone());
    alert.insert(
        "state_message".into(),
        match &p.details {
            Some(d) => format!("{title}\n\n{d}"),
            None => title.clone(),
        },
    );
    alert.insert("message_type".into(), message_type.into());
    alert.insert("entity_state".into(), entity_state.into());
    alert.insert("monitoring_tool".into(), "PagerDuty".into());
    put(&mut alert, "status", status.clone());
    put(&mut alert, "incident_id", inc(TextKey::Id));
    put(&mut alert, "incident_number", p.number);
    put(&mut alert, "incident_url", inc(TextKey::HtmlUrl));
    put(&mut alert, "incident_key", inc(TextKey::IncidentKey));
    put(&mut alert, "urgency", inc(TextKey::Urgency));
    put(&mut alert, "priority", p.priority);
    put(&mut alert, "service_id", p.service.id.clone());
    put(&mut alert, "service_name", p.service.name.clone());
    put(&mut alert, "agent", p.agent);
    Parsed {
        format: p.format,
        event_type: p.event_type,
        dedup_key,
        occurred_at: p.occurred.as_deref().and_then(parse_time),
        service: p.service,
        status,
        previous_status: None,
        title,
        details: p.details,
        components: Vec::new(),
        alert,
        raw_range: None,
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_v3_event_types_are_accepted() {
        let p = parse(
            r#"{"event":{"id":"E1","event_type":"incident.teleported","data":{"type":"mystery"}}}"#,
            None,
            100,
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].event_type, "incident.teleported");
        assert_eq!(p[0].dedup_key, "E1");
        assert_eq!(p[0].alert["message_type"], "INFO");
    }

    /// Guards the mapping by event type: with the incident's `status` instead, the priority
    /// change and escalation of a triggered incident read as CRITICAL.
    #[test]
    fn only_state_changes_map_to_anything_but_info() {
        let mapped: Vec<(String, String)> = [
            ("incident.triggered", "triggered"),
            ("incident.acknowledged", "acknowledged"),
            ("incident.unacknowledged", "triggered"),
            ("incident.resolved", "resolved"),
            ("incident.reopened", "triggered"),
            ("incident.priority_updated", "triggered"),
            ("incident.escalated", "triggered"),
            ("incident.annotated", "acknowledged"),
            ("incident.delegated", "triggered"),
            ("service.updated", ""),
        ]
        .iter()
        .map(|(t, status)| {
            let body = format!(
                r#"{{"event":{{"id":"E","event_type":"{t}","data":{{"id":"P","type":"incident","status":"{status}"}}}}}}"#
            );
            let p = parse(&body, None, 100).unwrap().remove(0);
            (t.to_string(), p.alert["message_type"].clone())
        })
        .collect();
        let want = [
            "CRITICAL",
            "ACKNOWLEDGEMENT",
            "CRITICAL",
            "RECOVERY",
            "CRITICAL",
            "INFO",
            "INFO",
            "INFO",
            "INFO",
            "INFO",
        ];
        for ((t, got), want) in mapped.iter().zip(want) {
            assert_eq!(got, want, "{t}");
        }
        let v1 = parse(
            r#"{"messages":[{"type":"incident.resolve","data":{"incident":{"id":"P","status":"resolved"}}},{"type":"incident.assign","data":{"incident":{"id":"P","status":"triggered"}}}]}"#,
            None,
            100,
        )
        .unwrap();
        assert_eq!(v1[0].alert["message_type"], "RECOVERY");
        assert_eq!(v1[1].alert["message_type"], "INFO");
    }

    #[test]
    fn webhook_id_wins_over_event_id() {
        let p = parse(r#"{"event":{"id":"E1"}}"#, Some("W9"), 100).unwrap();
        assert_eq!(p[0].dedup_key, "W9");
        assert_eq!(p[0].event_type, "unknown");
    }

    #[test]
    fn batches_yield_one_event_per_message_and_empty_batches_none() {
        let text = r#"{"messages":[{"id":"a","type":"incident.trigger"},{"id":"b","event":"incident.annotate"}, {"x" : 1}]}"#;
        let p = parse(text, None, 100).unwrap();
        let types: Vec<_> = p
            .iter()
            .map(|e| (e.format, e.event_type.as_str()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("pagerduty.v1", "incident.trigger"),
                ("pagerduty.v2", "incident.annotate"),
                ("pagerduty.unknown", "unknown")
            ]
        );
        // Each message's own bytes, exactly as they stood in the body.
        assert_eq!(&text[p[2].raw_range.clone().unwrap()], r#"{"x" : 1}"#);
        assert!(parse(r#"{"messages":[]}"#, None, 100).unwrap().is_empty());
        assert_eq!(
            parse(r#"{"messages":[{},{},{}]}"#, None, 2).unwrap_err(),
            NormalizeError::TooManyMessages { count: 3, max: 2 }
        );
    }

    #[test]
    fn non_webhook_json_is_refused() {
        let err = parse(r#"{"hello":"world"}"#, None, 100).unwrap_err();
        assert!(err.to_string().contains("not a PagerDuty webhook"), "{err}");
    }
}
